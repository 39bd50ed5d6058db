//! The first two phases of a proxied request: `admit` (method, normalised path against the route
//! allow-list, declared length) and `limit` (the client's rate and concurrency, then the global
//! concurrency). Both run before any body byte is read and before any key is loaded.

use http::{request::Parts, Method};
use tokio::sync::OwnedSemaphorePermit;

use super::Proxy;
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::telemetry::Gauge;

/// Concurrency slots a request holds until its response body ends.
pub struct Permits {
    _global: OwnedSemaphorePermit,
    _client: Option<OwnedSemaphorePermit>,
    /// `nimgate_requests_in_flight` counts the requests holding these permits.
    _in_flight: Gauge,
}

impl Proxy {
    /// Method, path and declared length; returns the normalised path the NIM will see.
    pub(super) fn admit(
        &self,
        parts: &Parts,
        normalized: Option<String>,
    ) -> Result<String, GatewayError> {
        if parts.method == Method::CONNECT || parts.method == Method::TRACE {
            return Err(GatewayError::MethodNotAllowed);
        }
        let path = normalized.ok_or(GatewayError::BadRequest)?;
        let allowed = self
            .settings
            .route_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()) || path == p[..p.len() - 1]);
        if !allowed {
            return Err(GatewayError::NotFound);
        }
        let content_length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if content_length.is_some_and(|n| n > self.settings.max_body_bytes) {
            return Err(GatewayError::BodyTooLarge);
        }
        Ok(path)
    }

    /// The client's rate limit, its concurrency, then the gateway's: the cheapest refusals first,
    /// and a refused request takes no global slot.
    pub(super) fn limit(&self, principal: &Principal) -> Result<Permits, GatewayError> {
        if let Some(l) = &principal.0.limiter {
            l.check().map_err(|wait| GatewayError::RateLimited {
                retry_after_secs: wait.as_secs_f64().ceil() as u64,
            })?;
        }
        let client = match &principal.0.concurrency {
            Some(sem) => Some(
                sem.clone()
                    .try_acquire_owned()
                    .map_err(|_| GatewayError::ClientConcurrency)?,
            ),
            None => None,
        };
        let global = self
            .concurrency
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::Overloaded)?;
        Ok(Permits {
            _global: global,
            _client: client,
            _in_flight: self.metrics.in_flight(),
        })
    }
}
