//! The ONE place the request stack is built. The whole path of one client request:
//!
//! **Connection** (`server/`): accept (beyond `limits.max_connections`, or
//! `limits.max_connections_per_ip` from one address, the socket is closed at once) → TLS handshake with ALPN, or the HTTP/2-preface sniff, both within
//! `limits.header_read_timeout` → hyper HTTP/1.1 (head size/count limits → 431) or HTTP/2
//! (stream limits, reset-flood limits, keep-alive pings) → the stall timeout on writes
//! (`limits.send_timeout`) → each request passed down as a `Call`, with the `RemoteAddr` (and,
//! with mTLS, the `PeerIdentity`) in its `Ctx`.
//!
//! **Layers**, outermost first (each answers with a response, never an error, so the stack's error
//! type is `Infallible`):
//!
//! 1. `RequestIdLayer` (`request/`) — marks `Authorization`, `Proxy-Authorization`,
//!    `X-Api-Key`, `Api-Key` sensitive before anything could log them, then keeps a valid client
//!    `X-Request-Id` or makes one; produces `RequestId`;
//! 2. `AuthLayer` (`auth/layer.rs`) — client key digest lookup or JWT check (a cache hit, else
//!    the signature; an unknown `kid` waits for one rate-limited JWKS refetch); produces `Principal`, or answers
//!    401 with a `denied` record within the address's unauthenticated budget, else 429 counted
//!    into a `denied_summary` (`auth/flood.rs`); consumes `RequestId`, `RemoteAddr`;
//! 3. `ProxyService` (`proxy/`) — the phases of `Proxy::forward`: admit → limit → read_prefix →
//!    route → load_key → build_upstream_request → send_with_retry → wrap_response (the table in
//!    `proxy/mod.rs` says why each sits where it does); consumes the whole `Ctx`.
//!
//! **Response**: streamed back frame by frame (`body/`), usage sniffed on the side, the `done`
//! record written when the body ends; the connection's permit is released when it closes.
//!
//! **Live state**: the stack, the routes and the client registry form one `Live`, read once per
//! request from an `ArcSwap` (no lock). A config reload (`server/reload.rs`) builds a whole new
//! `Live` with `App::rebuild` and publishes it with one store: a request in flight keeps the
//! state it started with. The rebuild keeps what must survive: unchanged clients' entries (rate
//! limiter, concurrency and budget state), unchanged upstreams (pools, key store, refresher),
//! the key store of an upstream whose secret settings are unchanged, the JWT key sets, and the
//! global in-flight semaphore while its size is the same.

use arc_swap::ArcSwap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;

use crate::audit::Audit;
use crate::auth::flood::DeniedBudget;
use crate::auth::{AuthLayer, AuthService, ClientRegistry, Prior};
use crate::config::{Backend, Config, SecretConfig, UpstreamRef};
use crate::error::InitError;
use crate::proxy::{ProxyService, ProxySettings, Routes, Upstream};
use crate::request::{RequestIdLayer, RequestIdService};
use crate::secret::{SecretSource, SecretStore};
use crate::telemetry::Metrics;

/// The stack's concrete type (no boxing: cloning it per connection/request clones a few `Arc`s).
pub type GatewayService = RequestIdService<AuthService<ProxyService>>;

/// What a config reload replaces, as one unit.
pub struct Live {
    pub service: GatewayService,
    pub routes: Arc<Routes>,
    /// Client keys and JWT issuers (the server runs the JWKS refreshers of its issuers).
    pub registry: Arc<ClientRegistry>,
    /// The validated config this state was built from (the next reload diffs against it).
    pub config: Arc<Config>,
    concurrency: Arc<Semaphore>,
}

/// Everything the server and admin listener need.
pub struct App {
    pub live: ArcSwap<Live>,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    /// Set on SIGTERM: `/readyz` answers 503 while in-flight requests drain.
    pub draining: AtomicBool,
    /// Unauthenticated refusals per address; pending counts are written at shutdown too.
    pub denied_budget: Arc<DeniedBudget>,
    /// `[ratelimit] backend = "redis"` (for its metrics).
    pub shared_limits: Option<Arc<crate::fleet::Shared>>,
}

/// A secret source, the store its refresher keeps fresh, and the upstream's name (one per upstream).
pub type SourceFor = (Arc<str>, Arc<SecretStore>, Box<dyn SecretSource>);

/// The upstream called `name` in `live`, with the config entry it was built from.
fn prior_upstream<'a>(live: &'a Live, name: &str) -> Option<(&'a Arc<Upstream>, UpstreamRef<'a>)> {
    let up = live.routes.all().iter().find(|u| &*u.name == name)?;
    let r = live
        .config
        .upstream_list()
        .into_iter()
        .find(|r| r.name == name)?;
    Some((up, r))
}

/// An upstream's settings apart from its secret (a change there keeps the key store).
fn without_secret(r: &UpstreamRef<'_>) -> crate::config::UpstreamConfig {
    let mut c = r.cfg.clone();
    c.secret = None;
    c
}

/// Each upstream with its own store and secret source (so its own refresher, Vault token and
/// `key_version`): one upstream's source failing never touches another's key. With `prior` (a
/// reload): an unchanged upstream is kept whole; one whose secret settings are unchanged keeps
/// its key store (and refresher); only the others get a new source, returned for a first fetch.
fn upstreams(
    cfg: &Config,
    prior: Option<&Live>,
) -> Result<(Vec<Arc<Upstream>>, Vec<SourceFor>), InitError> {
    let mut ups = Vec::new();
    let mut sources = Vec::new();
    for u in cfg.upstream_list() {
        let secret = u.secret.ok_or_else(|| {
            InitError::Config(format!("{}: the secret table is missing", u.secret_field))
        })?;
        let before = prior.and_then(|p| prior_upstream(p, u.name));
        let store = match &before {
            Some((old, r)) if r.secret == u.secret => {
                if without_secret(r) == without_secret(&u) && old.models == u.models {
                    ups.push((*old).clone());
                    continue;
                }
                old.store.clone()
            }
            _ => {
                let max_staleness = match secret {
                    SecretConfig::Vault(v) => Some(v.max_staleness),
                    SecretConfig::File(_) => None,
                };
                let store = Arc::new(SecretStore::new(&u.cfg.auth_value, max_staleness));
                let source = crate::secret::source_for(secret).map_err(InitError::Config)?;
                sources.push((Arc::from(u.name), store.clone(), source));
                store
            }
        };
        let interval = cfg.server.tls_reload_interval;
        let tls = crate::tls::UpstreamTls::start(u.name, &u.field, u.cfg, interval)
            .map_err(|e| InitError::Config(e.to_string()))?;
        let up = Upstream::new(u.name, u.cfg, u.models.clone(), store, tls)
            .map_err(|e| InitError::Config(format!("{}: {e}", u.field)))?;
        ups.push(Arc::new(up));
    }
    Ok((ups, sources))
}

pub fn build(cfg: &Config, audit: Audit) -> Result<(App, Vec<SourceFor>), InitError> {
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
    let upstream_names: Vec<Arc<str>> = cfg
        .upstream_list()
        .iter()
        .map(|u| Arc::from(u.name))
        .collect();
    let metrics = Arc::new(Metrics::new(&client_ids, &upstream_names, &[]));
    let denied_budget = Arc::new(DeniedBudget::new(cfg.limits.unauthenticated_rpm_per_ip));
    let parts = Parts {
        audit: &audit,
        metrics: &metrics,
        denied_budget: &denied_budget,
        shared_limits: shared_limits.as_ref(),
    };
    let (live, sources) = build_live(Arc::new(cfg.clone()), &parts, None)?;
    let app = App {
        live: ArcSwap::from_pointee(live),
        audit,
        metrics,
        draining: AtomicBool::new(false),
        denied_budget,
        shared_limits,
    };
    Ok((app, sources))
}

/// What every generation of `Live` shares.
struct Parts<'a> {
    audit: &'a Audit,
    metrics: &'a Arc<Metrics>,
    denied_budget: &'a Arc<DeniedBudget>,
    shared_limits: Option<&'a Arc<crate::fleet::Shared>>,
}

impl App {
    /// The live state a new connection or request starts with.
    pub fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    /// A new `Live` from validated `cfg`, carrying over from the current one what must survive
    /// (see the module header), and the secret sources of upstreams that need a new one (their
    /// stores are empty until a first fetch). Nothing is published: the caller swaps it in.
    pub fn rebuild(&self, cfg: Config) -> Result<(Live, Vec<SourceFor>), InitError> {
        let parts = Parts {
            audit: &self.audit,
            metrics: &self.metrics,
            denied_budget: &self.denied_budget,
            shared_limits: self.shared_limits.as_ref(),
        };
        let prior = self.live.load_full();
        build_live(Arc::new(cfg), &parts, Some(&prior))
    }
}

fn build_live(
    cfg: Arc<Config>,
    parts: &Parts<'_>,
    prior: Option<&Live>,
) -> Result<(Live, Vec<SourceFor>), InitError> {
    let (ups, sources) = upstreams(&cfg, prior)?;
    for u in &ups {
        parts.metrics.add_upstream(&u.name);
    }
    let slot = |id: &str| parts.metrics.client_slot(id);
    let prior_clients = prior.map(|p| Prior {
        registry: &p.registry,
        slot: &slot,
        keep_jwks: p.config.auth.jwt == cfg.auth.jwt,
    });
    let registry = Arc::new(
        ClientRegistry::rebuild(
            &cfg.clients,
            &cfg.auth.jwt,
            cfg.limits.client_concurrency_default(),
            prior_clients.as_ref(),
        )
        .map_err(InitError::Config)?,
    );
    let routes = Arc::new(Routes::new(&cfg, ups));
    let settings = ProxySettings {
        route_prefixes: cfg.server.route_prefixes.clone(),
        max_body_bytes: cfg.limits.max_body_bytes,
        body_timeout: cfg.limits.body_timeout,
        max_concurrent: cfg.limits.max_concurrent_requests,
        shared_limits: parts.shared_limits.cloned(),
        stream_usage: cfg.ratelimit.stream_usage,
    };
    let concurrency = match prior {
        Some(p)
            if p.config.limits.max_concurrent_requests == cfg.limits.max_concurrent_requests =>
        {
            p.concurrency.clone()
        }
        _ => Arc::new(Semaphore::new(cfg.limits.max_concurrent_requests)),
    };
    let proxy = ProxyService::with_concurrency(
        routes.clone(),
        parts.audit.clone(),
        parts.metrics.clone(),
        settings,
        concurrency.clone(),
    );
    let service = ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(AuthLayer {
            registry: registry.clone(),
            audit: parts.audit.clone(),
            metrics: parts.metrics.clone(),
            budget: parts.denied_budget.clone(),
        })
        .service(proxy);
    let live = Live {
        service,
        routes,
        registry,
        config: cfg,
        concurrency,
    };
    Ok((live, sources))
}
