//! `AuthLayer`: authenticate every request (there are no open routes on the client listener);
//! put the `Principal` in the request's extensions, or answer 401 with a `denied` audit record.
//! Generic over the request body, so it is unit-tested around an echo service without sockets.

use futures_util::future::{BoxFuture, Either};
use http::{Request, Response};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

use super::ClientRegistry;
use crate::audit::{Audit, Event, Record};
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::request::{method_name, truncated_path, RemoteAddr, RequestId};
use crate::telemetry::Metrics;

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

impl<S, B> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Resp, Error = Infallible>,
    B: Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Resp, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.cfg.registry.authenticate(req.headers()) {
            Ok(p) => {
                req.extensions_mut().insert(p);
                Either::Right(self.inner.call(req))
            }
            Err(why) => {
                let start = Instant::now();
                let id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
                let mut r = Record::event(Event::Denied);
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
                    metrics.denied(e);
                    metrics.response(401, start.elapsed());
                    Ok(e.into_response(id.as_ref()))
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{key_digest_hex, Principal};
    use crate::config::{AuditConfig, ClientConfig};
    use crate::request::RequestIdLayer;
    use http_body_util::BodyExt;
    use tower::{ServiceBuilder, ServiceExt};

    fn registry() -> Arc<ClientRegistry> {
        Arc::new(ClientRegistry::new(&[ClientConfig {
            id: "team-a".into(),
            key_sha256: key_digest_hex("ngk_good"),
            rpm: None,
            burst: None,
            max_concurrent: None,
        }]))
    }

    /// The stack's outer layers around an echo service that answers with the principal's id.
    async fn call(audit: &Audit, auth: Option<&str>) -> (u16, String) {
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer)
            .layer(AuthLayer {
                registry: registry(),
                audit: audit.clone(),
                metrics: Arc::new(Metrics::default()),
            })
            .service_fn(|req: Request<String>| async move {
                let id = req.extensions().get::<Principal>().map(|p| p.0.id.clone());
                let body = GatewayBody::full(id.as_deref().unwrap_or("none").to_string().into());
                Ok::<_, Infallible>(Response::new(body))
            });
        let mut req = Request::builder().uri("/v1/models?x=1");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = svc.oneshot(req.body(String::new()).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn principal_in_extensions_or_401_with_a_denied_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let cfg = AuditConfig {
            path: path.to_str().unwrap().into(),
            ..AuditConfig::default()
        };
        let (audit, writer) = Audit::start(&cfg).unwrap();
        assert_eq!(
            call(&audit, Some("Bearer ngk_good")).await,
            (200, "team-a".into())
        );
        let (status, body) = call(&audit, Some("Bearer ngk_wrong")).await;
        assert_eq!(status, 401);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert!(!body.contains("ngk_wrong"));
        assert_eq!(call(&audit, None).await.0, 401);
        assert!(audit.flush().await);
        drop(audit);
        writer.unwrap().join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let denied: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &serde_json::Value| v["event"] == "denied")
            .collect();
        assert_eq!(denied.len(), 2, "{text}");
        assert_eq!(denied[0]["reason"], "unknown_key");
        assert_eq!(denied[1]["reason"], "missing_key");
        assert_eq!(denied[0]["path"], "/v1/models");
        assert_eq!(denied[0]["status"], 401);
        assert!(!text.contains("ngk_wrong") && !text.contains("ngk_good"));
    }
}
