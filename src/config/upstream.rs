//! The `[upstream]` schema, shared by the single `[upstream]` form and each `[[upstreams]]`
//! entry (`upstreams.rs` resolves both forms to one list), and the checks of its TLS settings:
//! `client_cert`/`client_key` together and only for https:// URLs, `insecure_skip_verify` only
//! for https:// URLs and never beside a `ca_file` it would ignore (tests: `upstreams.rs`).

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use super::types::{dur, secs, SecretConfig};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(clippy::struct_excessive_bools, reason = "independent TOML switches")]
pub struct UpstreamConfig {
    /// `[[upstreams]]` only: the name in metrics, traces and audit records.
    #[serde(default)]
    pub name: Option<String>,
    /// One replica (or `urls` for several; exactly one of the two).
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub urls: Vec<String>,
    /// `[[upstreams]]` only: models routed here, exact names or a trailing `*`.
    #[serde(default)]
    pub models: Vec<String>,
    /// `[[upstreams]]` only: serves requests that name no model.
    #[serde(default)]
    pub default: bool,
    /// `[[upstreams]]` only: where this upstream's key comes from.
    #[serde(default)]
    pub secret: Option<SecretConfig>,
    /// Active health checks (`GET /v1/health/ready`) of every replica this often; absent = off.
    #[serde(default, with = "opt_dur")]
    pub health_interval: Option<Duration>,
    /// Send the key with health checks (off: probes carry no credential).
    #[serde(default)]
    pub health_auth: bool,
    /// Consecutive connect failures or 5xx answers that eject a replica.
    #[serde(default = "default_eject_after")]
    pub eject_after: u32,
    /// First ejection's length; doubled on each repeat, at most 32 times it.
    #[serde(default = "secs::<2>", with = "dur")]
    pub eject_backoff: Duration,
    #[serde(default = "default_auth_header")]
    pub auth_header: String,
    #[serde(default = "default_auth_value")]
    pub auth_value: String,
    #[serde(default = "secs::<5>", with = "dur")]
    pub connect_timeout: Duration,
    /// Time from sending the request until the upstream's response headers arrive.
    #[serde(default = "secs::<300>", with = "dur")]
    pub response_timeout: Duration,
    /// Speak HTTP/2 to the upstream (h2c prior knowledge for http://, ALPN for https://).
    #[serde(default)]
    pub http2: bool,
    #[serde(default = "secs::<90>", with = "dur")]
    pub pool_idle_timeout: Duration,
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    /// Extra CA bundle (PEM) trusted for an https:// upstream, besides the system roots
    /// (re-read when it changes, like every certificate file: `server.tls_reload_interval`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key presented to an https:// upstream that requires
    /// client certificates (mTLS); set both or neither; re-read when they change.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Do not verify the upstream's certificate (logged at WARN at start and on every reload).
    /// Only ever explicit; refused for http:// URLs and beside `ca_file`.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// On a 401/403 from the upstream, refresh the key once and retry with a new key.
    #[serde(default = "yes")]
    pub retry_on_auth_failure: bool,
}

/// An optional duration as a human string.
pub(crate) mod opt_dur {
    use serde::Deserializer;
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::dur::deserialize(d).map(Some)
    }
}

fn default_auth_header() -> String {
    "Authorization".into()
}
fn default_auth_value() -> String {
    "Bearer {key}".into()
}
fn default_pool_max_idle() -> usize {
    1024
}
fn default_eject_after() -> u32 {
    3
}
fn yes() -> bool {
    true
}

impl UpstreamConfig {
    /// `(field, url)` of each replica: `urls` if set, else `url`.
    pub fn replica_urls(&self, p: &str) -> Vec<(String, &str)> {
        if self.urls.is_empty() {
            (!self.url.is_empty())
                .then(|| (format!("{p}.url"), self.url.as_str()))
                .into_iter()
                .collect()
        } else {
            self.urls
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("{p}.urls[{i}]"), u.as_str()))
                .collect()
        }
    }

    /// The TLS settings of the upstream at `p` (`upstream` or `upstreams[i]`).
    pub(super) fn validate_tls(&self, p: &str, err: &mut impl FnMut(&str, String)) {
        let f = |k: &str| format!("{p}.{k}");
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => err(
                &f("client_key"),
                "must be set together with client_cert".into(),
            ),
            (None, Some(_)) => err(
                &f("client_cert"),
                "must be set together with client_key".into(),
            ),
            _ => {}
        }
        let plain = self
            .replica_urls(p)
            .iter()
            .any(|(_, u)| u.starts_with("http://"));
        if plain && self.client_cert.is_some() {
            err(
                &f("client_cert"),
                "needs https:// URLs: a client certificate is presented in a TLS handshake".into(),
            );
        }
        if self.insecure_skip_verify {
            if plain {
                err(
                    &f("insecure_skip_verify"),
                    "is meaningless for http:// URLs (there is no certificate to verify): remove it"
                        .into(),
                );
            }
            if self.ca_file.is_some() {
                err(
                    &f("insecure_skip_verify"),
                    "cannot be combined with ca_file (the CA would never be used)".into(),
                );
            }
        }
    }
}
