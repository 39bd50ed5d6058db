//! `GatewayError` → HTTP status + OpenAI-shaped JSON body, in one exhaustive match.
//!
//! Client-facing messages are fixed strings: no header value, key, upstream address or
//! internal detail is ever echoed. Details go to logs (without secrets).
//!
//! `code()` is also the metric `reason` label and the audit `reason`: `GatewayError::ALL` lists
//! every variant once, and a test fails when a variant is missing from it.

mod init;

pub use init::{InitError, EXIT_CONFIG, EXIT_IO, EXIT_SOFTWARE, EXIT_UNAVAILABLE};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::GatewayBody;
use crate::names::X_REQUEST_ID;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayError {
    /// No, malformed or unknown client key.
    Unauthenticated,
    /// Path outside the configured route prefixes (after normalisation).
    NotFound,
    /// CONNECT and other methods a proxy to an HTTP API never forwards.
    MethodNotAllowed,
    /// Request body larger than `limits.max_body_bytes`.
    BodyTooLarge,
    /// Malformed request (bad path encoding, unreadable body).
    BadRequest,
    /// The request body did not arrive within `limits.body_timeout`.
    BodyTimeout,
    /// Per-client rate limit; carries the seconds until a retry may succeed.
    RateLimited { retry_after_secs: u64 },
    /// Per-client `max_concurrent` reached.
    ClientConcurrency,
    /// `limits.max_concurrent_requests` reached.
    Overloaded,
    /// No usable NIM key (not loaded yet, or stale past `max_staleness`).
    KeyUnavailable,
    /// The audit record could not be written: the key is not sent.
    AuditUnavailable,
    /// Upstream connection failed or broke.
    UpstreamUnreachable,
    /// Upstream did not answer in `upstream.response_timeout`.
    UpstreamTimeout,
    /// The gateway is shutting down.
    ShuttingDown,
    /// The client's `tpm` or `tokens_per_day` is spent; carries the seconds until it refills.
    TokensExhausted { retry_after_secs: u64 },
    /// `[ratelimit] failure_mode = "closed"` and the shared backend cannot answer.
    LimiterUnavailable,
    /// No upstream serves the request's `model`.
    ModelNotFound,
    /// The client's `models` list excludes the model: answered exactly as `ModelNotFound`
    /// (existence is not revealed); only the audit `reason` differs.
    ModelNotAllowed,
    /// A body without a (findable) top-level `model` where routing needs one.
    ModelRequired,
    /// Every replica of the chosen upstream is ejected or failing its health check.
    UpstreamUnavailable,
}

impl GatewayError {
    /// Every variant once (`RateLimited` with a placeholder wait), in metric-label order.
    pub const ALL: [Self; 20] = [
        Self::Unauthenticated,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::BodyTooLarge,
        Self::BadRequest,
        Self::BodyTimeout,
        Self::RateLimited {
            retry_after_secs: 0,
        },
        Self::ClientConcurrency,
        Self::Overloaded,
        Self::KeyUnavailable,
        Self::AuditUnavailable,
        Self::UpstreamUnreachable,
        Self::UpstreamTimeout,
        Self::ShuttingDown,
        Self::TokensExhausted {
            retry_after_secs: 0,
        },
        Self::LimiterUnavailable,
        Self::ModelNotFound,
        Self::ModelNotAllowed,
        Self::ModelRequired,
        Self::UpstreamUnavailable,
    ];

    /// Position in `ALL` (the metrics' counter index). Exhaustive: a new variant must be placed.
    pub fn index(self) -> usize {
        match self {
            Self::Unauthenticated => 0,
            Self::NotFound => 1,
            Self::MethodNotAllowed => 2,
            Self::BodyTooLarge => 3,
            Self::BadRequest => 4,
            Self::BodyTimeout => 5,
            Self::RateLimited { .. } => 6,
            Self::ClientConcurrency => 7,
            Self::Overloaded => 8,
            Self::KeyUnavailable => 9,
            Self::AuditUnavailable => 10,
            Self::UpstreamUnreachable => 11,
            Self::UpstreamTimeout => 12,
            Self::ShuttingDown => 13,
            Self::TokensExhausted { .. } => 14,
            Self::LimiterUnavailable => 15,
            Self::ModelNotFound => 16,
            Self::ModelNotAllowed => 17,
            Self::ModelRequired => 18,
            Self::UpstreamUnavailable => 19,
        }
    }

    /// Whether this error can come from the upstream leg (for `nimgate_upstream_errors_total`).
    pub fn is_upstream(self) -> bool {
        matches!(
            self,
            Self::UpstreamUnreachable
                | Self::UpstreamTimeout
                | Self::UpstreamUnavailable
                | Self::BodyTooLarge
                | Self::BodyTimeout
        )
    }

    pub fn status_code(self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::NotFound | Self::ModelNotFound | Self::ModelNotAllowed => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest | Self::ModelRequired => StatusCode::BAD_REQUEST,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited { .. } | Self::ClientConcurrency | Self::TokensExhausted { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Overloaded
            | Self::LimiterUnavailable
            | Self::KeyUnavailable
            | Self::AuditUnavailable
            | Self::ShuttingDown
            | Self::UpstreamUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// (message, type, code) of the OpenAI error object.
    fn parts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Unauthenticated => (
                "Incorrect or missing API key. Send 'Authorization: Bearer <your gateway key>'.",
                "invalid_request_error",
                "invalid_api_key",
            ),
            Self::NotFound => ("Unknown route.", "invalid_request_error", "not_found"),
            Self::MethodNotAllowed => (
                "Method not allowed.",
                "invalid_request_error",
                "method_not_allowed",
            ),
            Self::BodyTooLarge => (
                "Request body too large.",
                "invalid_request_error",
                "request_too_large",
            ),
            Self::BadRequest => ("Malformed request.", "invalid_request_error", "bad_request"),
            Self::BodyTimeout => (
                "The request body was not received in time.",
                "invalid_request_error",
                "request_timeout",
            ),
            Self::RateLimited { .. } => (
                "Rate limit exceeded for this API key. Retry after the time in Retry-After.",
                "rate_limit_error",
                "rate_limit_exceeded",
            ),
            Self::ClientConcurrency => (
                "Too many concurrent requests for this API key.",
                "rate_limit_error",
                "concurrency_limit_exceeded",
            ),
            Self::Overloaded => (
                "The gateway is at capacity. Retry shortly.",
                "server_error",
                "overloaded",
            ),
            Self::KeyUnavailable => (
                "The upstream credential is currently unavailable.",
                "server_error",
                "credential_unavailable",
            ),
            Self::AuditUnavailable => (
                "The audit trail is unavailable; the request was not forwarded.",
                "server_error",
                "audit_unavailable",
            ),
            Self::UpstreamUnreachable => (
                "The upstream model server could not be reached.",
                "server_error",
                "upstream_unreachable",
            ),
            Self::UpstreamTimeout => (
                "The upstream model server did not respond in time.",
                "server_error",
                "upstream_timeout",
            ),
            Self::ShuttingDown => (
                "The gateway is shutting down.",
                "server_error",
                "shutting_down",
            ),
            Self::TokensExhausted { .. } => (
                "Token budget exhausted for this API key. Retry after the time in Retry-After.",
                "rate_limit_error",
                "tokens_exhausted",
            ),
            Self::LimiterUnavailable => (
                "Rate limits cannot be checked right now. Retry shortly.",
                "server_error",
                "rate_limit_unavailable",
            ),
            Self::ModelNotFound | Self::ModelNotAllowed => (
                "The model does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            ),
            Self::ModelRequired => (
                "The request body must name a `model` (a top-level string).",
                "invalid_request_error",
                "model_required",
            ),
            Self::UpstreamUnavailable => (
                "No replica of the upstream model server is available. Retry shortly.",
                "server_error",
                "upstream_unavailable",
            ),
        }
    }

    /// Short stable name: the OpenAI error `code`, the metric `reason` label, the audit `reason`.
    pub fn code(self) -> &'static str {
        match self {
            Self::ModelNotAllowed => "model_not_allowed",
            _ => self.parts().2,
        }
    }

    /// The OpenAI error `param`: the request field at fault, if one is.
    fn param(self) -> Option<&'static str> {
        matches!(
            self,
            Self::ModelNotFound | Self::ModelNotAllowed | Self::ModelRequired
        )
        .then_some("model")
    }

    pub fn into_response(self, request_id: Option<&HeaderValue>) -> Response<GatewayBody> {
        let (message, kind, code) = self.parts();
        let body = serde_json::json!({
            "error": { "message": message, "type": kind, "param": self.param(), "code": code }
        });
        let mut resp = Response::new(GatewayBody::full(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status_code();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Self::RateLimited { retry_after_secs } | Self::TokensExhausted { retry_after_secs } =
            self
        {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs.max(1)),
            );
        }
        if self == Self::Unauthenticated {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"nimgate\""),
            );
        }
        if let Some(id) = request_id {
            h.insert(X_REQUEST_ID, id.clone());
        }
        resp
    }
}

#[cfg(test)]
mod tests;
