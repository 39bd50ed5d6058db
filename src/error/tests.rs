//! The error table: every variant, its status, OpenAI type, code and param.

use super::*;
use http_body_util::BodyExt;

#[test]
fn all_lists_every_variant_once_with_a_unique_code() {
    let mut codes = std::collections::HashSet::new();
    for (i, e) in GatewayError::ALL.iter().enumerate() {
        assert_eq!(e.index(), i, "{e:?} is out of place in ALL");
        assert!(codes.insert(e.code()), "duplicate code {}", e.code());
        assert!(e
            .code()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_'));
    }
    assert_eq!(codes.len(), GatewayError::ALL.len());
}

#[tokio::test]
async fn error_table() {
    let table: [(GatewayError, u16, &str, &str); 20] = [
        (
            GatewayError::Unauthenticated,
            401,
            "invalid_request_error",
            "invalid_api_key",
        ),
        (
            GatewayError::NotFound,
            404,
            "invalid_request_error",
            "not_found",
        ),
        (
            GatewayError::MethodNotAllowed,
            405,
            "invalid_request_error",
            "method_not_allowed",
        ),
        (
            GatewayError::BodyTooLarge,
            413,
            "invalid_request_error",
            "request_too_large",
        ),
        (
            GatewayError::BadRequest,
            400,
            "invalid_request_error",
            "bad_request",
        ),
        (
            GatewayError::BodyTimeout,
            408,
            "invalid_request_error",
            "request_timeout",
        ),
        (
            GatewayError::RateLimited {
                retry_after_secs: 7,
            },
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
        ),
        (
            GatewayError::ClientConcurrency,
            429,
            "rate_limit_error",
            "concurrency_limit_exceeded",
        ),
        (GatewayError::Overloaded, 503, "server_error", "overloaded"),
        (
            GatewayError::KeyUnavailable,
            503,
            "server_error",
            "credential_unavailable",
        ),
        (
            GatewayError::AuditUnavailable,
            503,
            "server_error",
            "audit_unavailable",
        ),
        (
            GatewayError::UpstreamUnreachable,
            502,
            "server_error",
            "upstream_unreachable",
        ),
        (
            GatewayError::UpstreamTimeout,
            504,
            "server_error",
            "upstream_timeout",
        ),
        (
            GatewayError::ShuttingDown,
            503,
            "server_error",
            "shutting_down",
        ),
        (
            GatewayError::TokensExhausted {
                retry_after_secs: 3,
            },
            429,
            "rate_limit_error",
            "tokens_exhausted",
        ),
        (
            GatewayError::LimiterUnavailable,
            503,
            "server_error",
            "rate_limit_unavailable",
        ),
        (
            GatewayError::ModelNotFound,
            404,
            "invalid_request_error",
            "model_not_found",
        ),
        (
            GatewayError::ModelNotAllowed,
            404,
            "invalid_request_error",
            "model_not_found",
        ),
        (
            GatewayError::ModelRequired,
            400,
            "invalid_request_error",
            "model_required",
        ),
        (
            GatewayError::UpstreamUnavailable,
            503,
            "server_error",
            "upstream_unavailable",
        ),
    ];
    let id = HeaderValue::from_static("rid-1");
    for (e, status, kind, code) in table {
        let resp = e.into_response(Some(&id));
        assert_eq!(resp.status().as_u16(), status, "{e:?}");
        let h = resp.headers().clone();
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-request-id"], "rid-1");
        assert_eq!(
            h.contains_key("retry-after"),
            status == 429 && code != "concurrency_limit_exceeded"
        );
        assert_eq!(h.contains_key("www-authenticate"), status == 401);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], kind, "{e:?}");
        assert_eq!(v["error"]["code"], code, "{e:?}");
        let model = code.starts_with("model_");
        assert_eq!(
            v["error"]["param"].as_str(),
            model.then_some("model"),
            "{e:?}"
        );
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let r = GatewayError::RateLimited {
        retry_after_secs: 0,
    }
    .into_response(None);
    assert_eq!(r.headers()["retry-after"], "1");
}
