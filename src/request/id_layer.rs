//! `RequestIdLayer`: keep a valid client `X-Request-Id`, else generate one; store it in the
//! request's extensions as `RequestId` (the proxy sends it upstream, every response carries it).

use http::{HeaderValue, Request};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};
use tower::{Layer, Service};

use super::RequestId;
use crate::names::X_REQUEST_ID;

#[derive(Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService(inner)
    }
}

#[derive(Clone)]
pub struct RequestIdService<S>(S);

/// A client-supplied request id is kept if it is 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt};

    async fn id_seen(header: Option<&str>) -> String {
        let svc =
            ServiceBuilder::new()
                .layer(RequestIdLayer)
                .service_fn(|req: Request<()>| async move {
                    let id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
                    Ok::<_, Infallible>(id.unwrap().to_str().unwrap().to_string())
                });
        let mut req = Request::builder();
        if let Some(h) = header {
            req = req.header(X_REQUEST_ID, h);
        }
        svc.oneshot(req.body(()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn keeps_a_valid_client_id_and_replaces_an_invalid_one() {
        assert_eq!(id_seen(Some("abc-123_x.y:z")).await, "abc-123_x.y:z");
        for bad in ["a b", "x{y}", &"a".repeat(129)] {
            let got = id_seen(Some(bad)).await;
            assert_ne!(got, bad);
            assert_eq!(got.len(), 32, "{got}");
        }
        let (a, b) = (id_seen(None).await, id_seen(None).await);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(!valid_request_id(&HeaderValue::from_static("a b")));
        assert!(!valid_request_id(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
    }
}
