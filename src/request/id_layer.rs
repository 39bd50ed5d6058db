//! `RequestIdLayer`, the stack's first: mark the credential headers sensitive (before anything
//! could log them), then keep a valid client `X-Request-Id`, else generate one, as the `Call`'s
//! `request_id` (the proxy sends it upstream, every response carries it).

use http::{header, HeaderMap, HeaderValue};
use std::task::{Context, Poll};
use tower::{Layer, Service};

use super::{Call, RequestId};
use crate::names::{API_KEY, X_API_KEY, X_REQUEST_ID};

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

/// A fresh id: 128 bits of SHA-256(per-thread 256-bit key from the OS ‖ per-thread counter),
/// hex. Unpredictable and unlinkable (a shared counter told anyone how many requests others
/// made, and when), without a syscall per request: one SHA-256 block (~0.1–0.3 µs).
fn new_request_id() -> RequestId {
    use sha2::{Digest, Sha256};
    use std::cell::Cell;
    thread_local! {
        static KEY: [u8; 32] = {
            let mut k = [0u8; 32];
            if getrandom::getrandom(&mut k).is_err() {
                // No OS randomness: still unique per process and thread, just guessable.
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                k[..16].copy_from_slice(&t.to_le_bytes());
                k[16..24].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
            }
            k
        };
        static COUNTER: Cell<u64> = const { Cell::new(0) };
    }
    let n = COUNTER.get();
    COUNTER.set(n.wrapping_add(1));
    let digest = KEY.with(|k| {
        let mut h = Sha256::new();
        h.update(k);
        h.update(n.to_le_bytes());
        h.finalize()
    });
    let mut hex_id = [b'0'; 32];
    // 16 bytes always fit 32 hex digits.
    let _ = hex::encode_to_slice(&digest[..16], &mut hex_id);
    RequestId::from_hex(hex_id)
}

/// Credential headers are marked sensitive: `Debug` of the map and hyper's HTTP/2 encoder (no
/// HPACK indexing) then treat them as secrets.
fn mark_sensitive(h: &mut HeaderMap) {
    for name in [
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
        X_API_KEY,
        API_KEY,
    ] {
        if let header::Entry::Occupied(mut e) = h.entry(name) {
            for v in e.iter_mut() {
                v.set_sensitive(true);
            }
        }
    }
}

impl<S, B> Service<Call<B>> for RequestIdService<S>
where
    S: Service<Call<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut c: Call<B>) -> S::Future {
        mark_sensitive(c.req.headers_mut());
        let id = match c
            .req
            .headers()
            .get(X_REQUEST_ID)
            .filter(|v| valid_request_id(v))
        {
            Some(v) => RequestId::from_header(v.clone()),
            None => new_request_id(),
        };
        c.ctx.request_id = Some(id);
        self.0.call(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt};

    async fn id_seen(header: Option<&str>) -> String {
        let svc =
            ServiceBuilder::new()
                .layer(RequestIdLayer)
                .service_fn(|c: Call<()>| async move {
                    let id = c.ctx.request_id.as_ref().map(|r| r.header.clone());
                    Ok::<_, Infallible>(id.unwrap().to_str().unwrap().to_string())
                });
        let mut req = Request::builder();
        if let Some(h) = header {
            req = req.header(X_REQUEST_ID, h);
        }
        svc.oneshot(Call::new(req.body(()).unwrap())).await.unwrap()
    }

    #[test]
    fn credential_headers_are_marked_sensitive() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("authorization", "Bearer a"),
            ("authorization", "Bearer b"),
            ("proxy-authorization", "Basic c"),
            ("x-api-key", "d"),
            ("api-key", "e"),
            ("content-type", "text/plain"),
        ] {
            h.append(n, HeaderValue::from_static(v));
        }
        mark_sensitive(&mut h);
        for (n, v) in &h {
            assert_eq!(v.is_sensitive(), n != header::CONTENT_TYPE, "{n}");
        }
        assert_eq!(h.get_all(header::AUTHORIZATION).iter().count(), 2);
        // Debug of the map hides them.
        let shown = format!("{h:?}");
        assert!(
            !shown.contains("Bearer") && shown.contains("text/plain"),
            "{shown}"
        );
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
    fn generated_ids_share_no_counter() {
        let ids: Vec<String> = (0..64)
            .map(|_| {
                let id = new_request_id();
                // The header value and the recorded text are the same bytes.
                assert_eq!(id.header.to_str().unwrap(), &*id.text);
                id.text.to_string()
            })
            .collect();
        let set: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(set.len(), ids.len());
        // The old ids were `<fixed prefix><counter>`: consecutive ids shared their first half.
        for w in ids.windows(2) {
            assert_eq!(w[0].len(), 32);
            assert_ne!(w[0][..16], w[1][..16], "{} {}", w[0], w[1]);
            assert_ne!(w[0][16..], w[1][16..]);
        }
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
