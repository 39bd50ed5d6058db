//! The ONE place the request stack is built. Layer order, outermost first:
//!
//! 1. `SetSensitiveRequestHeadersLayer` — marks `Authorization`, `Proxy-Authorization`,
//!    `X-Api-Key`, `Api-Key` sensitive before anything could log them;
//! 2. `RequestIdLayer` — keeps a valid client `X-Request-Id` or makes one;
//! 3. `AuthLayer` — client key digest lookup; 401 + `denied` record otherwise;
//! 4. `ProxyService` — path normalisation + allow-list, rate/concurrency limits, key load,
//!    `use` record (fail closed), header rewrite + key injection, upstream, streamed response.
//!
//! Every layer answers with a response (errors are already mapped to OpenAI-shaped JSON), so the
//! stack's error type is `Infallible`.

use http::{header, HeaderName};
use std::sync::Arc;
use tower::ServiceBuilder;
use tower_http::sensitive_headers::{SetSensitiveRequestHeaders, SetSensitiveRequestHeadersLayer};

use crate::audit::Audit;
use crate::auth::ClientRegistry;
use crate::config::{Config, SecretConfig};
use crate::layers::{AuthLayer, AuthService, RequestIdLayer, RequestIdService};
use crate::proxy::headers::{API_KEY, X_API_KEY};
use crate::proxy::{ProxyService, ProxySettings, Upstream};
use crate::secret::{file::FileSource, SecretSource, SecretStore};
use crate::telemetry::Metrics;

/// The stack's concrete type (no boxing: cloning it per connection/request clones a few `Arc`s).
pub type GatewayService = SetSensitiveRequestHeaders<RequestIdService<AuthService<ProxyService>>>;

/// Everything the server and admin listener need.
pub struct App {
    pub service: GatewayService,
    pub store: Arc<SecretStore>,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    pub clients: usize,
}

pub fn build(cfg: &Config, audit: Audit) -> Result<(App, Box<dyn SecretSource>), String> {
    let max_staleness = match &cfg.secret {
        SecretConfig::Vault(v) => Some(v.max_staleness),
        SecretConfig::File(_) => None,
    };
    let store = Arc::new(SecretStore::new(&cfg.upstream.auth_value, max_staleness));
    let source: Box<dyn SecretSource> = match &cfg.secret {
        SecretConfig::File(f) => Box::new(FileSource::new(f)),
        SecretConfig::Vault(v) => Box::new(crate::secret::vault::VaultSource::new(v)?),
    };
    let metrics = Arc::new(Metrics::default());
    let registry = Arc::new(ClientRegistry::new(&cfg.clients));
    let upstream = Upstream::new(&cfg.upstream)?;
    let auth_header = HeaderName::from_bytes(cfg.upstream.auth_header.as_bytes())
        .map_err(|_| "upstream.auth_header: invalid header name".to_string())?;
    let settings = ProxySettings {
        auth_header,
        route_prefixes: cfg.server.route_prefixes.clone(),
        max_body_bytes: cfg.limits.max_body_bytes,
        body_timeout: cfg.limits.body_timeout,
        response_timeout: cfg.upstream.response_timeout,
        retry_on_auth_failure: cfg.upstream.retry_on_auth_failure,
        max_concurrent: cfg.limits.max_concurrent_requests,
    };
    let proxy = ProxyService::new(
        upstream,
        store.clone(),
        audit.clone(),
        metrics.clone(),
        settings,
    );
    let stack = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
            X_API_KEY,
            API_KEY,
        ]))
        .layer(RequestIdLayer)
        .layer(AuthLayer {
            registry: registry.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
        })
        .service(proxy);
    let app = App {
        service: stack,
        store,
        audit,
        metrics,
        clients: registry.len(),
    };
    Ok((app, source))
}
