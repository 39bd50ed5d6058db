//! `AuthLayer`: authenticate every request (there are no open routes on the client listener);
//! set the `Call`'s `Principal`, or answer 401 with a `denied` audit record —
//! within the remote address's unauthenticated budget (`flood.rs`); beyond it a 429, counted into
//! a `denied_summary` record. A `denied` record never holds the client's `X-Request-Id` and keeps
//! at most `DENIED_PATH_CHARS` of the path: an unauthenticated peer chooses that text.
//! Generic over the request body, so it is unit-tested around an echo service without sockets.

use futures_util::future::{BoxFuture, Either};
use http::Response;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

use super::flood::{ip_of, DeniedBudget};
use super::{AuthFailure, AuthMethod, ClientRegistry};
use crate::audit::{Audit, Event, Record};
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::request::{method_name, Call};
use crate::telemetry::{Metrics, Op, ReqLabels};

/// Characters of an unauthenticated request's path kept in its `denied` record.
pub const DENIED_PATH_CHARS: usize = 128;

fn short_path(p: &str) -> Arc<str> {
    match p.char_indices().nth(DENIED_PATH_CHARS) {
        Some((i, _)) => Arc::from(&p[..i]),
        None => Arc::from(p),
    }
}

#[derive(Clone)]
pub struct AuthLayer {
    pub registry: Arc<ClientRegistry>,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    /// Per-address budget of individually recorded refusals.
    pub budget: Arc<DeniedBudget>,
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

impl<S, B> Service<Call<B>> for AuthService<S>
where
    S: Service<Call<B>, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Resp, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut c: Call<B>) -> Self::Future {
        match self
            .cfg
            .registry
            .authenticate_with(c.req.headers(), c.ctx.peer.as_ref())
        {
            Ok(p) => {
                c.ctx.principal = Some(p);
                Either::Right(self.inner.call(c))
            }
            Err(why) if why.wants_refetch() => {
                // A JWT whose `kid` its issuer's cached keys lack: refetch them (rate-limited),
                // then check again. The clone is the one `poll_ready` readied (tower's pattern).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let cfg = self.cfg.clone();
                Either::Left(Box::pin(async move {
                    match cfg.registry.authenticate_refetching(c.req.headers()).await {
                        Ok(p) => {
                            c.ctx.principal = Some(p);
                            inner.call(c).await
                        }
                        Err(why) => cfg.deny(c, why).await,
                    }
                }))
            }
            Err(why) => Either::Left(Box::pin(self.cfg.deny(c, why))),
        }
    }
}

impl AuthLayer {
    /// 401 with a `denied` record (or 429 beyond the address's budget).
    fn deny<B: Send + 'static>(
        &self,
        Call { req, ctx }: Call<B>,
        why: AuthFailure,
    ) -> impl std::future::Future<Output = Result<Resp, Infallible>> + Send + 'static {
        let start = Instant::now();
        let id = ctx.request_id.map(|r| r.header);
        let remote = ctx.remote.map(|a| a.0);
        let ip = remote.as_deref().and_then(ip_of);
        let reason = why.reason();
        // The raw path's ending is enough for a label (no normalising allocation here).
        let op = Op::of_path(req.uri().path());
        let within = self.budget.allow(ip);
        let mut r = Record::event(Event::Denied);
        r.remote_addr = remote;
        r.method = Some(method_name(req.method()));
        r.path = Some(short_path(req.uri().path()));
        r.status = Some(401);
        r.reason = Some(reason.to_string());
        r.auth = why.method().map(AuthMethod::name);
        let audit = self.audit.clone();
        let metrics = self.metrics.clone();
        let budget = self.budget.clone();
        async move {
            drop(req);
            // Over budget, or the queue down to the room reserved for `use` records:
            // counted for the next `denied_summary` instead of recorded one by one.
            if !(within && audit.record_unreserved(r).is_ok()) {
                budget.shed(ip, reason, &audit);
            }
            let e = if within {
                GatewayError::Unauthenticated
            } else {
                GatewayError::RateLimited {
                    retry_after_secs: 60,
                }
            };
            let l = ReqLabels {
                client: metrics.unauthenticated(),
                op,
            };
            metrics.denied(l.client, e);
            metrics.response(l, None, e.status_code().as_u16(), start.elapsed());
            Ok(e.into_response(id.as_ref()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::key_digest_hex;
    use crate::config::{AuditConfig, ClientConfig};
    use crate::request::RequestIdLayer;
    use http_body_util::BodyExt;
    use tower::{ServiceBuilder, ServiceExt};

    fn registry() -> Arc<ClientRegistry> {
        Arc::new(
            ClientRegistry::new(
                &[ClientConfig::keyed("team-a", key_digest_hex("ngk_good"))],
                &[],
                1024,
            )
            .unwrap(),
        )
    }

    /// The stack's outer layers around an echo service that answers with the principal's id.
    async fn call(audit: &Audit, auth: Option<&str>) -> (u16, String) {
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer)
            .layer(AuthLayer {
                registry: registry(),
                audit: audit.clone(),
                metrics: Arc::new(Metrics::default()),
                budget: Arc::new(DeniedBudget::new(60)),
            })
            .service_fn(|c: Call<String>| async move {
                let id = c.ctx.principal.as_ref().map(|p| p.0.id.clone());
                let body = GatewayBody::full(id.as_deref().unwrap_or("none").to_string().into());
                Ok::<_, Infallible>(Response::new(body))
            });
        let mut req = http::Request::builder().uri("/v1/models?x=1");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let req = Call::new(req.body(String::new()).unwrap());
        let resp = svc.oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn principal_set_or_401_with_a_denied_record() {
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
