//! Where a request goes: an `Upstream` (one NIM deployment: its replicas, each with its own
//! connection pool, its own `SecretStore` and how the key is injected) chosen per request by
//! `Routes::choose` from the request's model. Each upstream keeps its own store, so one key never
//! reaches another upstream's replicas.
//!
//! Matching (see also `config/upstreams.rs`): an exact model name first; else the pattern
//! (`prefix*`) with the longest prefix; else `model_not_found`. A request without a model goes to
//! the default upstream, except a POST with a body when the default claims no `*`: the model is
//! required there (400 naming `model`), as the NIM would need it too.

use http::HeaderName;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::client::Pool;
use super::replica::{Ejection, Replica};
use crate::config::{Config, UpstreamConfig};
use crate::error::GatewayError;
use crate::secret::SecretStore;

pub struct Upstream {
    /// In audit records, metrics and logs.
    pub name: Arc<str>,
    pub replicas: Vec<Arc<Replica>>,
    /// This upstream's key, and only this upstream's.
    pub store: Arc<SecretStore>,
    pub auth_header: HeaderName,
    /// Bytes of `auth_value` before and after `{key}`: where the raw key sits in the injected
    /// header value (for redacting it from responses).
    pub key_affixes: (usize, usize),
    pub response_timeout: Duration,
    pub retry_on_auth_failure: bool,
    pub ejection: Ejection,
    pub health_interval: Option<Duration>,
    pub health_auth: bool,
    /// The patterns this upstream claims (exact names or `prefix*`).
    pub models: Vec<String>,
    pub stats: UpstreamStats,
    /// The TLS config every replica's new connections use (reloaded from its files).
    pub tls: crate::tls::UpstreamTls,
}

/// Routing events of one upstream, for `/metrics`.
#[derive(Default)]
pub struct UpstreamStats {
    pub ejections: AtomicU64,
    pub health_check_failures: AtomicU64,
    /// Attempts moved to another replica after a connect failure.
    pub retries: AtomicU64,
}

impl Upstream {
    pub fn new(
        name: &str,
        cfg: &UpstreamConfig,
        models: Vec<String>,
        store: Arc<SecretStore>,
        tls: crate::tls::UpstreamTls,
    ) -> Result<Self, String> {
        let auth_header = HeaderName::from_bytes(cfg.auth_header.as_bytes())
            .map_err(|_| "upstream.auth_header: invalid header name".to_string())?;
        let replicas = cfg
            .replica_urls("upstream")
            .into_iter()
            .map(|(_, url)| Pool::new(cfg, url, &tls).map(|p| Arc::new(Replica::new(p))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: Arc::from(name),
            replicas,
            store,
            auth_header,
            key_affixes: cfg
                .auth_value
                .split_once("{key}")
                .map_or((0, 0), |(p, s)| (p.len(), s.len())),
            response_timeout: cfg.response_timeout,
            retry_on_auth_failure: cfg.retry_on_auth_failure,
            ejection: Ejection {
                after: cfg.eject_after,
                backoff: cfg.eject_backoff,
            },
            health_interval: cfg.health_interval,
            health_auth: cfg.health_auth,
            models,
            stats: UpstreamStats::default(),
            tls,
        })
    }

    /// A connect failure or broken exchange (`answered`: false) or a 5xx (true) from `r`: may
    /// eject it.
    pub fn failed(&self, r: &Replica, now: u64, answered: bool) {
        if r.failed(self.ejection, now, answered) {
            self.stats.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, replica = %r.pool.label, "replica ejected");
        }
    }

    /// Whether some replica takes requests now.
    pub fn any_up(&self) -> bool {
        let now = super::replica::now_ms();
        self.replicas.iter().any(|r| r.is_up(now))
    }
}

/// The upstreams and how a request picks one.
pub struct Routes {
    upstreams: Vec<Arc<Upstream>>,
    exact: HashMap<String, usize>,
    /// `(prefix, upstream)`, longest prefix first.
    patterns: Vec<(String, usize)>,
    default: Option<usize>,
    /// `[[upstreams]]` form: `/v1/models` is answered by the gateway (merged).
    pub multi: bool,
}

/// Whether `model` matches `pattern` (exact, or `prefix*`).
pub fn pattern_matches(pattern: &str, model: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => model.starts_with(prefix),
        None => pattern == model,
    }
}

impl Routes {
    /// From validated config: `upstreams` in `cfg.upstream_list()` order.
    pub fn new(cfg: &Config, upstreams: Vec<Arc<Upstream>>) -> Self {
        let mut exact = HashMap::new();
        let mut patterns = Vec::new();
        let mut default = None;
        for (i, (u, r)) in upstreams.iter().zip(cfg.upstream_list()).enumerate() {
            if r.default {
                default = Some(i);
            }
            for m in &u.models {
                match m.strip_suffix('*') {
                    Some(p) => patterns.push((p.to_string(), i)),
                    None => {
                        exact.insert(m.clone(), i);
                    }
                }
            }
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Self {
            upstreams,
            exact,
            patterns,
            default,
            multi: !cfg.upstreams.is_empty(),
        }
    }

    /// The upstream claiming `model`, if any.
    pub fn lookup(&self, model: &str) -> Option<&Arc<Upstream>> {
        let i = self.exact.get(model).copied().or_else(|| {
            self.patterns
                .iter()
                .find(|(p, _)| model.starts_with(p.as_str()))
                .map(|(_, i)| *i)
        })?;
        self.upstreams.get(i)
    }

    /// The upstream for a request whose body names `model` (if any); `has_body`: a POST body
    /// was sent without a (findable) model.
    pub fn choose(
        &self,
        model: Option<&str>,
        has_body: bool,
    ) -> Result<&Arc<Upstream>, GatewayError> {
        if let Some(m) = model {
            return self.lookup(m).ok_or(GatewayError::ModelNotFound);
        }
        let d = self
            .default
            .and_then(|i| self.upstreams.get(i))
            .ok_or(GatewayError::NotFound)?;
        if has_body && !d.models.iter().any(|m| m == "*") {
            return Err(GatewayError::ModelRequired);
        }
        Ok(d)
    }

    pub fn all(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn routes(entries: &[(&str, &str, bool)]) -> Routes {
        let mut t = String::new();
        for (name, models, default) in entries {
            use std::fmt::Write;
            let _ = writeln!(
                t,
                "[[upstreams]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:1\"\nmodels = {models}\ndefault = {default}\n[upstreams.secret]\nsource = \"file\"\npath = \"/k\""
            );
        }
        let cfg = crate::config::parse(&t).unwrap();
        let ups = cfg
            .upstream_list()
            .iter()
            .map(|u| {
                let store = Arc::new(SecretStore::new("Bearer {key}", None));
                let tls = crate::tls::UpstreamTls::start(u.name, &u.field, u.cfg, SEC).unwrap();
                Arc::new(Upstream::new(u.name, u.cfg, u.models.clone(), store, tls).unwrap())
            })
            .collect();
        Routes::new(&cfg, ups)
    }

    fn to(r: &Routes, model: Option<&str>, body: bool) -> Result<String, GatewayError> {
        r.choose(model, body).map(|u| u.name.to_string())
    }

    #[test]
    fn exact_beats_pattern_and_the_longest_prefix_wins() {
        let r = routes(&[
            ("exact", r#"["meta/llama-3.3-70b"]"#, false),
            ("long", r#"["meta/llama-3.3-*"]"#, false),
            ("short", r#"["meta/*"]"#, false),
            ("embed", r#"["nv/e5"]"#, true),
        ]);
        let ok = |m: &str| to(&r, Some(m), true).unwrap();
        assert_eq!(ok("meta/llama-3.3-70b"), "exact");
        assert_eq!(ok("meta/llama-3.3-8b"), "long");
        assert_eq!(ok("meta/llama-3.1-8b"), "short");
        assert_eq!(ok("nv/e5"), "embed");
        assert_eq!(
            to(&r, Some("nv/e5x"), true),
            Err(GatewayError::ModelNotFound)
        );
        assert_eq!(
            to(&r, Some("META/x"), true),
            Err(GatewayError::ModelNotFound)
        );
        // No model: the default for bodiless requests; a body must name one (no `*` default).
        assert_eq!(to(&r, None, false).unwrap(), "embed");
        assert_eq!(to(&r, None, true), Err(GatewayError::ModelRequired));
    }

    #[test]
    fn a_catch_all_default_takes_model_less_bodies() {
        let r = routes(&[
            ("llm", r#"["meta/*"]"#, false),
            ("hosted", r#"["*"]"#, true),
        ]);
        assert_eq!(to(&r, None, true).unwrap(), "hosted");
        assert_eq!(to(&r, Some("anything"), true).unwrap(), "hosted");
        assert_eq!(to(&r, Some("meta/x"), true).unwrap(), "llm");
    }
}
