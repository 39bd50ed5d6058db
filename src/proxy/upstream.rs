//! Where a request goes: an `Upstream` (one NIM: its connection pool, its own `SecretStore` and
//! how the key is injected) chosen per request by `Routes`. Today there is one upstream, named
//! `default`; routing by model plugs in here as `Routes::choose`, with each upstream keeping its
//! own store so one key never reaches another upstream.

use http::HeaderName;
use std::sync::Arc;
use std::time::Duration;

use super::client::Pool;
use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use crate::secret::SecretStore;

pub struct Upstream {
    /// In audit records, metrics and logs.
    pub name: Arc<str>,
    pub pool: Pool,
    /// This upstream's key, and only this upstream's.
    pub store: Arc<SecretStore>,
    pub auth_header: HeaderName,
    /// Bytes of `auth_value` before and after `{key}`: where the raw key sits in the injected
    /// header value (for redacting it from responses).
    pub key_affixes: (usize, usize),
    pub response_timeout: Duration,
    pub retry_on_auth_failure: bool,
}

impl Upstream {
    pub fn new(name: &str, cfg: &UpstreamConfig, store: Arc<SecretStore>) -> Result<Self, String> {
        let auth_header = HeaderName::from_bytes(cfg.auth_header.as_bytes())
            .map_err(|_| "upstream.auth_header: invalid header name".to_string())?;
        Ok(Self {
            name: Arc::from(name),
            pool: Pool::new(cfg)?,
            store,
            auth_header,
            key_affixes: cfg
                .auth_value
                .split_once("{key}")
                .map_or((0, 0), |(p, s)| (p.len(), s.len())),
            response_timeout: cfg.response_timeout,
            retry_on_auth_failure: cfg.retry_on_auth_failure,
        })
    }
}

/// The upstreams and how a request picks one.
pub struct Routes {
    upstreams: Vec<Arc<Upstream>>,
}

impl Routes {
    pub fn single(upstream: Upstream) -> Self {
        Self {
            upstreams: vec![Arc::new(upstream)],
        }
    }

    /// The upstream for a request whose body names `model` (if any).
    pub fn choose(&self, _model: Option<&str>) -> Result<&Arc<Upstream>, GatewayError> {
        self.upstreams.first().ok_or(GatewayError::NotFound)
    }

    pub fn all(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }
}
