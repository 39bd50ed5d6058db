//! The first two phases of a proxied request: `admit` (method, normalised path against the route
//! allow-list, declared length) and `limit` (the client's rate, token budget — this process's,
//! then the fleet's shared one when `[ratelimit] backend = "redis"` — and concurrency, then the
//! global concurrency). Both run before any body byte is read and before any key is loaded.
//! `Permits` carries what the limits left (the `x-ratelimit-*` response headers) and charges the
//! response's tokens when it ends.

use http::{request::Parts, HeaderMap, HeaderValue, Method};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

use super::Proxy;
use crate::auth::Principal;
use crate::config::FailureMode;
use crate::error::GatewayError;
use crate::fleet::{Shared, Verdict};
use crate::telemetry::Gauge;

/// Concurrency slots a request holds until its response body ends, and its client's limits.
pub struct Permits {
    _global: OwnedSemaphorePermit,
    _client: Option<OwnedSemaphorePermit>,
    principal: Principal,
    shared: Option<Arc<Shared>>,
    /// (limit, remaining, reset) of requests and of tokens, for the response headers.
    requests: Option<(u64, u64, Duration)>,
    tokens: Option<(u64, u64, Duration)>,
    /// `nimgate_requests_in_flight` counts the requests holding these permits.
    _in_flight: Gauge,
}

impl Permits {
    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, as OpenAI sends them, for a
    /// client with limits.
    pub fn write_headers(&self, h: &mut HeaderMap) {
        const NAMES: [[&str; 3]; 2] = [
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
        ];
        for (names, v) in NAMES.iter().zip([self.requests, self.tokens]) {
            let Some((limit, remaining, reset)) = v else {
                continue;
            };
            h.insert(names[0], HeaderValue::from(limit));
            h.insert(names[1], HeaderValue::from(remaining));
            if let Ok(r) = HeaderValue::try_from(openai_duration(reset)) {
                h.insert(names[2], r);
            }
        }
    }

    /// The response used `tokens`: charge the client's budgets (here, and in the fleet's).
    pub fn charge(&self, tokens: u64) {
        let c = &self.principal.0;
        if let Some(b) = &c.budget {
            b.charge(tokens);
            if let Some(s) = &self.shared {
                s.charge(&c.id, &c.shared, tokens);
            }
        }
    }
}

/// OpenAI's reset format: `6m0s`, `1.5s`, `20ms`.
pub fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn retry_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl Proxy {
    /// Method, path and declared length; returns the normalised path the NIM will see.
    pub(super) fn admit(
        &self,
        parts: &Parts,
        as_sent: Option<bool>,
        path: &str,
    ) -> Result<bool, GatewayError> {
        if parts.method == Method::CONNECT || parts.method == Method::TRACE {
            return Err(GatewayError::MethodNotAllowed);
        }
        let as_sent = as_sent.ok_or(GatewayError::BadRequest)?;
        let allowed = self
            .settings
            .route_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()) || path == &p[..p.len() - 1]);
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
        Ok(as_sent)
    }

    /// The client's rate limit and token budget (here, then in the fleet's backend), its
    /// concurrency, then the gateway's: the cheapest refusals first, and a refused request takes
    /// no global slot.
    pub(super) async fn limit(&self, principal: &Principal) -> Result<Permits, GatewayError> {
        let c = &principal.0;
        let mut requests = None;
        let mut tokens = None;
        if let Some(l) = &c.limiter {
            let s = l.check().map_err(|wait| GatewayError::RateLimited {
                retry_after_secs: retry_secs(wait),
            })?;
            requests = Some((u64::from(l.rpm), s.remaining, s.reset));
        }
        if let Some(b) = &c.budget {
            let left = b.check().map_err(|e| GatewayError::TokensExhausted {
                retry_after_secs: retry_secs(e.0),
            })?;
            tokens = Some((left.limit, left.remaining, left.reset));
        }
        let shared = self
            .settings
            .shared_limits
            .as_ref()
            .filter(|_| !c.shared.is_empty());
        if let Some(s) = shared {
            // Boxed: only clients with shared limits wait on Redis; inline, the round trip's
            // state would grow every request's future.
            match Box::pin(s.check(&c.id, &c.shared)).await {
                Verdict::Allowed {
                    requests: r,
                    tokens: t,
                    day,
                } => {
                    if let (Some(rq), Some((rem, reset))) = (requests.as_mut(), r) {
                        (rq.1, rq.2) = (rem, reset);
                    }
                    if let (Some(tk), Some((rem, reset))) = (tokens.as_mut(), t) {
                        (tk.1, tk.2) = (rem, reset);
                    }
                    if let (Some(tk), Some(d)) = (tokens.as_mut(), day) {
                        tk.1 = tk.1.min(d);
                    }
                }
                Verdict::Requests(wait) => {
                    return Err(GatewayError::RateLimited {
                        retry_after_secs: retry_secs(wait),
                    })
                }
                Verdict::Tokens(wait) => {
                    return Err(GatewayError::TokensExhausted {
                        retry_after_secs: retry_secs(wait),
                    })
                }
                Verdict::Unavailable if s.failure_mode == FailureMode::Closed => {
                    return Err(GatewayError::LimiterUnavailable)
                }
                Verdict::Unavailable => {}
            }
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
            principal: principal.clone(),
            shared: shared.cloned(),
            requests,
            tokens,
            _in_flight: self.metrics.in_flight(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::openai_duration;
    use std::time::Duration;

    #[test]
    fn reset_durations_read_like_openais() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_secs(2)), "2s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
    }
}
