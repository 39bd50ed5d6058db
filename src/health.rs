//! The admin listener: `/healthz` (process alive), `/readyz` (keys loaded and fresh, audit
//! writable; each upstream reported), `/metrics` (Prometheus). Separate address, never proxied,
//! no secrets.
//!
//! Readiness with several upstreams: `ready` when every upstream has a fresh key; `degraded`
//! (still 200, so the load balancer keeps sending the other upstreams' traffic) when only some
//! have; 503 `not_ready` when none has, the audit is failing or the gateway is draining.

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::App;
use crate::secret::store::Unavailable;

pub async fn serve_admin(listener: TcpListener, app: Arc<App>, mut stop: watch::Receiver<bool>) {
    // Out of descriptors, `accept` fails at once every time: back off, log rarely.
    let mut backoff = crate::server::AcceptBackoff::default();
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    backoff.failed("admin.listen", &e).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        backoff.ok();
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&app, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        "/readyz" => readyz(app),
        "/metrics" => {
            let live = app.live();
            let sources: Vec<(&str, &crate::secret::SecretStore)> = live
                .routes
                .all()
                .iter()
                .map(|u| (&*u.name, &*u.store))
                .collect();
            let mut text = app.metrics.render(&sources, &app.audit);
            if let Some(s) = &app.shared_limits {
                s.render(&mut text);
            }
            text.push_str(&crate::telemetry::render_routes(&live.routes));
            let server_tls = app.metrics.server_tls.get();
            text.push_str(&crate::telemetry::render_tls(server_tls, &live.routes));
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
    }
}

fn readyz(app: &App) -> Response<Full<Bytes>> {
    let now = crate::proxy::replica::now_ms();
    let mut each = serde_json::Map::new();
    let (mut fresh, mut worst) = (0, "ok");
    let live = app.live();
    for u in live.routes.all() {
        let key = match u.store.ready() {
            Ok(()) => "ok",
            Err(Unavailable::NotLoaded) => "not_loaded",
            Err(Unavailable::Stale) => "stale",
        };
        if key == "ok" {
            fresh += 1;
        } else if worst == "ok" || key == "not_loaded" {
            worst = key;
        }
        let up = u.replicas.iter().filter(|r| r.is_up(now)).count();
        each.insert(
            u.name.to_string(),
            serde_json::json!({"key": key, "replicas": u.replicas.len(), "replicas_up": up}),
        );
    }
    let audit = if app.audit.healthy() { "ok" } else { "failing" };
    let draining = app.draining.load(Ordering::Acquire);
    let ok = fresh > 0 && audit == "ok" && !draining;
    let state = match (ok, draining) {
        (true, _) if worst == "ok" => "ready",
        (true, _) => "degraded",
        (false, true) => "draining",
        (false, false) => "not_ready",
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body =
        serde_json::json!({"status": state, "key": worst, "audit": audit, "upstreams": each});
    json(status, body.to_string())
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}
