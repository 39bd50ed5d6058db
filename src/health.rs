//! The admin listener: `/healthz` (process alive), `/readyz` (key loaded and fresh, audit
//! writable), `/metrics` (Prometheus). Separate address, never proxied, no secrets.

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
        "/readyz" => {
            let key = match app.store().map(|s| s.ready()) {
                Some(Ok(())) => "ok",
                Some(Err(Unavailable::NotLoaded)) | None => "not_loaded",
                Some(Err(Unavailable::Stale)) => "stale",
            };
            let audit = if app.audit.healthy() { "ok" } else { "failing" };
            let draining = app.draining.load(Ordering::Acquire);
            let ok = key == "ok" && audit == "ok" && !draining;
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let state = match (ok, draining) {
                (true, _) => "ready",
                (false, true) => "draining",
                (false, false) => "not_ready",
            };
            json(
                status,
                format!(r#"{{"status":"{state}","key":"{key}","audit":"{audit}"}}"#),
            )
        }
        "/metrics" => {
            let sources: Vec<(&str, &crate::secret::SecretStore)> = app
                .routes
                .all()
                .iter()
                .map(|u| (&*u.name, &*u.store))
                .collect();
            let mut text = app.metrics.render(&sources, &app.audit);
            if let Some(s) = &app.shared_limits {
                s.render(&mut text);
            }
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

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}
