//! Requests nimgate itself makes to a replica: active health checks (`GET /v1/health/ready`
//! every `health_interval`, without the key unless `health_auth = true`) and the model-list
//! fetch of `models.rs`. A probe that carries the key gets a `use` record naming the replica,
//! like any key use; a keyless probe is not audited.

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use super::replica::Replica;
use super::request_body::RequestBody;
use super::upstream::Upstream;
use crate::audit::{Audit, Event, Record};

/// Largest probe response body read.
const MAX_PROBE_BODY: usize = 1 << 20;

/// `GET path` on `rep`, with `up`'s key when `keyed` (and then a `use` record first; no key
/// or no record written: not sent). The status and body, or `None` on any failure.
pub async fn get(
    up: &Upstream,
    rep: &Replica,
    path: &'static str,
    keyed: bool,
    audit: &Audit,
    timeout: Duration,
) -> Option<(StatusCode, Bytes)> {
    let mut req = Request::new(RequestBody::Replay { data: None });
    *req.method_mut() = Method::GET;
    *req.uri_mut() = Uri::builder()
        .scheme(rep.pool.scheme.clone())
        .authority(rep.pool.authority.clone())
        .path_and_query(path)
        .build()
        .ok()?;
    if let Some(host) = &rep.pool.host {
        req.headers_mut().insert(http::header::HOST, host.clone());
    }
    if keyed {
        let key = up.store.load().ok()?;
        let mut r = Record::event(Event::Use);
        r.method = Some("GET".into());
        r.path = Some(Arc::from(path));
        r.upstream = Some(up.name.clone());
        r.replica = Some(rep.pool.label.clone());
        r.key_version = Some(key.version.clone());
        r.key_fingerprint = Some(key.fingerprint.clone());
        r.reason = Some("gateway_probe".into());
        audit.record_use(r).await.ok()?;
        req.headers_mut()
            .insert(up.auth_header.clone(), key.header_value.clone());
    }
    let fetch = async {
        let resp = rep.pool.request(req).await.ok()?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_PROBE_BODY)
            .collect()
            .await
            .ok()?
            .to_bytes();
        Some((status, body))
    };
    tokio::time::timeout(timeout, fetch).await.ok().flatten()
}

/// Health-check every replica of `up` each `health_interval` until `stop`.
pub async fn run(up: Arc<Upstream>, audit: Audit, mut stop: watch::Receiver<bool>) {
    let Some(every) = up.health_interval else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let checks = up.replicas.iter().map(|rep| {
            let (up, audit) = (&up, &audit);
            async move {
                let got = get(up, rep, "/v1/health/ready", up.health_auth, audit, every).await;
                let ok = got.is_some_and(|(s, _)| s == StatusCode::OK);
                if !ok {
                    up.stats
                        .health_check_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
                if rep.probed(ok) {
                    if ok {
                        tracing::info!(upstream = %up.name, replica = %rep.pool.label, "replica passed its health check: in rotation");
                    } else {
                        tracing::warn!(upstream = %up.name, replica = %rep.pool.label, "replica failed its health check: out of rotation");
                    }
                }
            }
        });
        tokio::select! {
            _ = futures_util::future::join_all(checks) => {}
            _ = stop.changed() => return,
        }
    }
}
