//! The ONE place the request stack is built. The whole path of one client request:
//!
//! **Connection** (`server/`): accept (beyond `limits.max_connections`, or
//! `limits.max_connections_per_ip` from one address, the socket is closed at once) → TLS handshake with ALPN, or the HTTP/2-preface sniff, both within
//! `limits.header_read_timeout` → hyper HTTP/1.1 (head size/count limits → 431) or HTTP/2
//! (stream limits, reset-flood limits, keep-alive pings) → the stall timeout on writes
//! (`limits.send_timeout`) → `RemoteAddr` inserted into each request's extensions.
//!
//! **Layers**, outermost first (each answers with a response, never an error, so the stack's error
//! type is `Infallible`):
//!
//! 1. `SetSensitiveRequestHeadersLayer` — marks `Authorization`, `Proxy-Authorization`,
//!    `X-Api-Key`, `Api-Key` sensitive before anything could log them;
//! 2. `RequestIdLayer` (`request/`) — keeps a valid client `X-Request-Id` or makes one;
//!    produces `RequestId`;
//! 3. `AuthLayer` (`auth/layer.rs`) — client key digest lookup or JWT check (a cache hit, else
//!    the signature; an unknown `kid` waits for one rate-limited JWKS refetch); produces `Principal`, or answers
//!    401 with a `denied` record within the address's unauthenticated budget, else 429 counted
//!    into a `denied_summary` (`auth/flood.rs`); consumes `RequestId`, `RemoteAddr`;
//! 4. `ProxyService` (`proxy/`) — the phases of `Proxy::forward`: admit → limit → read_prefix →
//!    route → load_key → build_upstream_request → send_with_retry → wrap_response (the table in
//!    `proxy/mod.rs` says why each sits where it does); consumes all three extensions.
//!
//! **Response**: streamed back frame by frame (`body/`), usage sniffed on the side, the `done`
//! record written when the body ends; the connection's permit is released when it closes.

use http::header;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tower::ServiceBuilder;
use tower_http::sensitive_headers::{SetSensitiveRequestHeaders, SetSensitiveRequestHeadersLayer};

use crate::audit::Audit;
use crate::auth::flood::DeniedBudget;
use crate::auth::{AuthLayer, AuthService, ClientRegistry};
use crate::config::{Backend, Config, SecretConfig};
use crate::error::InitError;
use crate::names::{API_KEY, X_API_KEY};
use crate::proxy::{ProxyService, ProxySettings, Routes, Upstream};
use crate::request::{RequestIdLayer, RequestIdService};
use crate::secret::{SecretSource, SecretStore};
use crate::telemetry::Metrics;

/// The stack's concrete type (no boxing: cloning it per connection/request clones a few `Arc`s).
pub type GatewayService = SetSensitiveRequestHeaders<RequestIdService<AuthService<ProxyService>>>;

/// Everything the server and admin listener need.
pub struct App {
    pub service: GatewayService,
    pub routes: Arc<Routes>,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    pub clients: usize,
    /// Client keys and JWT issuers (the server starts the JWKS refreshers from it).
    pub registry: Arc<ClientRegistry>,
    /// Set on SIGTERM: `/readyz` answers 503 while in-flight requests drain.
    pub draining: AtomicBool,
    /// Unauthenticated refusals per address; pending counts are written at shutdown too.
    pub denied_budget: Arc<DeniedBudget>,
    /// `[ratelimit] backend = "redis"` (for its metrics).
    pub shared_limits: Option<Arc<crate::fleet::Shared>>,
}

impl App {
    /// The first upstream's key store (the key gauges of `/metrics`; the single form's only one).
    pub fn store(&self) -> Option<&Arc<SecretStore>> {
        self.routes.all().first().map(|u| &u.store)
    }
}

/// A secret source, the store its refresher keeps fresh, and the upstream's name (one per upstream).
pub type SourceFor = (Arc<str>, Arc<SecretStore>, Box<dyn SecretSource>);

/// Each upstream with its own store and secret source (so its own refresher, Vault token and
/// `key_version`): one upstream's source failing never touches another's key.
fn upstreams(cfg: &Config) -> Result<(Vec<Arc<Upstream>>, Vec<SourceFor>), InitError> {
    let mut ups = Vec::new();
    let mut sources = Vec::new();
    for u in cfg.upstream_list() {
        let secret = u.secret.ok_or_else(|| {
            InitError::Config(format!("{}: the secret table is missing", u.secret_field))
        })?;
        let max_staleness = match secret {
            SecretConfig::Vault(v) => Some(v.max_staleness),
            SecretConfig::File(_) => None,
        };
        let store = Arc::new(SecretStore::new(&u.cfg.auth_value, max_staleness));
        let source = crate::secret::source_for(secret).map_err(InitError::Config)?;
        let interval = cfg.server.tls_reload_interval;
        let tls = crate::tls::UpstreamTls::start(u.name, &u.field, u.cfg, interval)
            .map_err(|e| InitError::Config(e.to_string()))?;
        let up = Upstream::new(u.name, u.cfg, u.models.clone(), store.clone(), tls)
            .map_err(|e| InitError::Config(format!("{}: {e}", u.field)))?;
        sources.push((up.name.clone(), store, source));
        ups.push(Arc::new(up));
    }
    Ok((ups, sources))
}

pub fn build(cfg: &Config, audit: Audit) -> Result<(App, Vec<SourceFor>), InitError> {
    let (ups, sources) = upstreams(cfg)?;
    let registry = Arc::new(
        ClientRegistry::new(
            &cfg.clients,
            &cfg.auth.jwt,
            cfg.limits.client_concurrency_default(),
        )
        .map_err(InitError::Config)?,
    );
    let routes = Arc::new(Routes::new(cfg, ups));
    let shared_limits = match cfg.ratelimit.backend {
        Backend::Local => None,
        Backend::Redis => Some(crate::fleet::Shared::new(
            &cfg.ratelimit,
            crate::fleet::target(&cfg.ratelimit).map_err(InitError::Config)?,
        )),
    };
    // Label slots: clients in config order (their `Principal` carries the index), upstreams by name.
    let client_ids: Vec<Arc<str>> = cfg
        .clients
        .iter()
        .map(|c| Arc::from(c.id.as_str()))
        .collect();
    let upstream_names: Vec<Arc<str>> = routes.all().iter().map(|u| u.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(&client_ids, &upstream_names, &[]));
    let settings = ProxySettings {
        route_prefixes: cfg.server.route_prefixes.clone(),
        max_body_bytes: cfg.limits.max_body_bytes,
        body_timeout: cfg.limits.body_timeout,
        max_concurrent: cfg.limits.max_concurrent_requests,
        shared_limits: shared_limits.clone(),
        stream_usage: cfg.ratelimit.stream_usage,
    };
    let denied_budget = Arc::new(DeniedBudget::new(cfg.limits.unauthenticated_rpm_per_ip));
    let proxy = ProxyService::new(routes.clone(), audit.clone(), metrics.clone(), settings);
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
            budget: denied_budget.clone(),
        })
        .service(proxy);
    let app = App {
        service: stack,
        routes,
        audit,
        metrics,
        clients: registry.len(),
        registry,
        draining: AtomicBool::new(false),
        denied_budget,
        shared_limits,
    };
    Ok((app, sources))
}
