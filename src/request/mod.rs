//! Request-context types shared by the layers and the proxy: the request id, the client's address,
//! the method's name for records, and `ReqInfo`, what every audit record of one request shares.
//! They travel beside the request as its `Ctx`, in a `Call` (not in the request's extensions:
//! their first insert costs three allocations, and every read a type-id lookup). Who fills what
//! (see `app.rs`): the server sets `remote` and `peer` per connection, `RequestIdLayer` sets
//! `request_id`, `AuthLayer` sets `principal`.

mod id_layer;

pub use id_layer::{RequestIdLayer, RequestIdService};

use bytestring::ByteString;
use http::{HeaderValue, Method, Request};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use crate::audit::{Event, Record};

/// One request as the stack's layers pass it down: hyper's request and its context beside it
/// (the per-request context argument of proxies such as Pingora, as a tower request type).
pub struct Call<B> {
    pub req: Request<B>,
    pub ctx: Ctx,
}

impl<B> Call<B> {
    /// A request with nothing known about it yet (tests, and the server before its layers).
    pub fn new(req: Request<B>) -> Self {
        Self {
            req,
            ctx: Ctx::default(),
        }
    }
}

/// What the server and the layers know about one request.
#[derive(Clone, Default)]
pub struct Ctx {
    pub remote: Option<RemoteAddr>,
    /// The client certificate's identity (TLS listener with client certificates).
    pub peer: Option<crate::auth::mtls::PeerIdentity>,
    pub request_id: Option<RequestId>,
    pub principal: Option<crate::auth::Principal>,
}

/// The request id, set by `RequestIdLayer` (client's if valid, else generated).
#[derive(Clone)]
pub struct RequestId {
    /// As sent upstream and to the client (cloning it never copies).
    pub header: HeaderValue,
    /// As records show it: the same bytes, shared.
    pub text: ByteString,
}

impl RequestId {
    /// A client's (already valid, so ASCII) id: the header value is kept as it is.
    pub fn from_header(header: HeaderValue) -> Self {
        let text = ByteString::from(header.to_str().unwrap_or_default());
        Self { header, text }
    }

    /// A generated id (32 hex digits): one allocation that the header value and the text share.
    pub fn from_hex(hex: [u8; 32]) -> Self {
        let b = bytes::Bytes::from_owner(hex);
        let text = ByteString::try_from(b.clone()).unwrap_or_default();
        let header = HeaderValue::from_maybe_shared(b)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        Self { header, text }
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

/// A normalised path as records show it: the OpenAI routes nearly every request names share one
/// `Arc` each (a reference count, no allocation per request); any other path is copied once.
pub fn path_text(p: &str) -> Arc<str> {
    static KNOWN: std::sync::LazyLock<[Arc<str>; 4]> = std::sync::LazyLock::new(|| {
        [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/models",
        ]
        .map(Arc::from)
    });
    match KNOWN.iter().find(|k| ***k == *p) {
        Some(k) => k.clone(),
        None => Arc::from(p),
    }
}

/// A request path as recorded when it could not be normalised: at most 512 characters.
pub fn truncated_path(p: &str) -> Arc<str> {
    match p.char_indices().nth(512) {
        Some((i, _)) => Arc::from(&p[..i]),
        None => Arc::from(p),
    }
}

/// Milliseconds since `start`, rounded to microseconds, for `duration_ms`.
pub fn ms(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// What every audit record of one request shares (cheap to clone: `Arc`s).
#[derive(Clone)]
pub struct ReqInfo {
    pub start: Instant,
    pub request_id: HeaderValue,
    pub id_text: Option<ByteString>,
    pub client_id: Arc<str>,
    /// `auth` and `subject` of every record (from the `Principal`).
    pub auth: &'static str,
    pub subject: Option<Arc<str>>,
    pub remote: Option<Arc<str>>,
    pub method: Cow<'static, str>,
    /// Normalised, or (when it cannot be) the raw path cut to 512 characters.
    pub path: Arc<str>,
    /// The client and operation slots of the request's metrics.
    pub labels: crate::telemetry::ReqLabels,
    /// The SERVER span (`Span::none()` with tracing off); it ends when the last clone drops,
    /// with the response body.
    pub span: tracing::Span,
    /// Its trace id, for the `use`/`done` records.
    pub trace_id: Option<Arc<str>>,
}

impl ReqInfo {
    pub fn record(&self, event: Event) -> Record {
        let mut r = Record::event(event);
        r.request_id = self.id_text.clone();
        r.trace_id = self.trace_id.clone();
        r.client_id = Some(self.client_id.clone());
        r.auth = Some(self.auth);
        r.subject = self.subject.clone();
        r.remote_addr = self.remote.clone();
        r.method = Some(self.method.clone());
        r.path = Some(self.path.clone());
        r
    }

    pub fn elapsed_ms(&self) -> f64 {
        ms(self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_and_truncation() {
        assert!(matches!(method_name(&Method::POST), Cow::Borrowed("POST")));
        let m = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(method_name(&m), "PROPFIND");
        let long = "é".repeat(600);
        assert_eq!(truncated_path(&long).chars().count(), 512);
        assert_eq!(&*truncated_path("/v1/x"), "/v1/x");
    }

    #[test]
    fn known_routes_share_their_recorded_path() {
        let chat = path_text("/v1/chat/completions");
        assert!(Arc::ptr_eq(&chat, &path_text("/v1/chat/completions")));
        assert_eq!(&*chat, "/v1/chat/completions");
        let other = path_text("/v1/chat/x");
        assert!(!Arc::ptr_eq(&other, &path_text("/v1/chat/x")));
        assert_eq!(&*other, "/v1/chat/x");
    }
}
