//! The config schema. Every struct denies unknown keys; every optional key has a default here.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use super::audit::*;
pub use super::auth::JwtIssuerConfig;
pub use super::ratelimit::*;
pub use super::secret::*;
pub use super::upstream::*;
pub use super::upstreams::*;
use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// The single-upstream form (`[upstream]` + `[secret]`): one upstream named `default`.
    #[serde(default)]
    pub upstream: Option<UpstreamConfig>,
    #[serde(default)]
    pub secret: Option<SecretConfig>,
    /// The multi-upstream form (`[[upstreams]]`, each with its `[upstreams.secret]`).
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub ratelimit: RateLimitConfig,
    #[serde(default)]
    pub telemetry: super::telemetry::TelemetryConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain and key: when both are set the client listener speaks TLS
    /// (ALPN h2 + http/1.1).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle for client certificates (mTLS, `auth/mtls.rs`); needs `tls_cert`.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `optional` (a certificate is verified when presented) or `required`
    /// (a handshake without a valid client certificate fails).
    pub client_auth: ClientAuthMode,
    /// Only paths under these prefixes (after normalisation) are proxied; all else is 404.
    pub route_prefixes: Vec<String>,
    /// After SIGTERM/SIGINT: how long `/readyz` answers 503 while the listener still accepts,
    /// so load balancers (Kubernetes endpoints) stop sending before the port closes.
    #[serde(with = "dur")]
    pub drain_delay: Duration,
    /// Then: how long in-flight requests and streams may run after the listener closed.
    #[serde(with = "dur")]
    pub shutdown_grace: Duration,
    /// Worker threads (0 = number of CPUs).
    pub workers: usize,
    /// Peers (CIDRs or addresses) whose `X-Forwarded-For` names the client (`server::xff`).
    pub trusted_proxies: Vec<String>,
    /// How often the config file and `auth.clients_file` are re-read (by content) to reload on
    /// a change; SIGHUP reloads at once. `0s`: on SIGHUP only.
    #[serde(with = "dur")]
    pub config_poll_interval: Duration,
    /// The log filter (`RUST_LOG` syntax: `info`, `nimgate=debug,warn`), changed by a reload;
    /// `RUST_LOG`, when set, takes its place.
    pub log_level: String,
    /// How often every certificate, key and CA file (`tls_cert`, `tls_key`, `client_ca`, each
    /// upstream's `ca_file`, `client_cert`, `client_key`) is re-read and compared by content.
    #[serde(with = "dur")]
    pub tls_reload_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            client_auth: ClientAuthMode::Optional,
            route_prefixes: vec!["/v1/".into()],
            drain_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(30),
            workers: 0,
            trusted_proxies: Vec::new(),
            config_poll_interval: Duration::from_secs(5),
            log_level: "info".into(),
            tls_reload_interval: Duration::from_secs(10),
        }
    }
}

impl ServerConfig {
    /// `client_ca` and whether a client certificate is required, for the TLS config.
    pub fn client_ca_mode(&self) -> Option<(&std::path::Path, bool)> {
        let ca = self.client_ca.as_deref()?;
        Some((ca, self.client_auth == ClientAuthMode::Required))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    Optional,
    Required,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 9090).into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub id: String,
    /// Hex SHA-256 digest of the client's key (`nimgate keys new` prints it). A client needs a
    /// key, a `jwt_subject`, or both.
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// Sustained requests per minute (GCRA); absent = unlimited.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Requests that may arrive at once after an idle period (default: `rpm`, i.e. up to a
    /// minute's worth at once; `AuthConfig`'s clients get the same default).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Requests this client may have in flight at once; absent = `limits.client_max_concurrent`.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Tokens per minute (prompt + completion, from each response's `usage`); absent = unlimited.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Tokens per UTC day; absent = unlimited.
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    /// Models this client may use (exact names or a trailing `*`); absent = all.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// A verified JWT whose subject claim equals this is this client (`[[auth.jwt]]`).
    #[serde(default)]
    pub jwt_subject: Option<String>,
    /// Only tokens from this `[[auth.jwt]] issuer` map to `jwt_subject` (default: any issuer).
    #[serde(default)]
    pub jwt_issuer: Option<String>,
    /// A verified client certificate with this URI SAN (e.g. a SPIFFE id) is this client.
    #[serde(default)]
    pub cert_san_uri: Option<String>,
    /// A verified client certificate with this DNS SAN is this client.
    #[serde(default)]
    pub cert_san_dns: Option<String>,
    /// A verified client certificate whose subject common name is this (and whose SANs map to
    /// no client) is this client.
    #[serde(default)]
    pub cert_subject_cn: Option<String>,
    /// After this UTC instant (`2027-03-01T00:00:00Z`) the key gets 401 `key_expired`.
    #[serde(default)]
    pub expires: Option<toml::value::Datetime>,
}

impl ClientConfig {
    /// `expires` as a time; `Err` when it is not a UTC (`Z`) date-time.
    pub fn expires_at(&self) -> Result<Option<std::time::SystemTime>, String> {
        self.expires
            .as_ref()
            .map(|d| {
                humantime::parse_rfc3339(&d.to_string())
                    .map_err(|_| "must be a UTC date-time such as 2027-03-01T00:00:00Z".to_string())
            })
            .transpose()
    }
}

impl ClientConfig {
    /// A client with a key digest and no limits (tests, benches, `demo`).
    pub fn keyed(id: &str, key_sha256: String) -> Self {
        Self {
            id: id.into(),
            key_sha256: Some(key_sha256),
            rpm: None,
            burst: None,
            max_concurrent: None,
            tpm: None,
            tokens_per_day: None,
            models: None,
            jwt_subject: None,
            jwt_issuer: None,
            cert_san_uri: None,
            cert_san_dns: None,
            cert_subject_cn: None,
            expires: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A TOML file with more `[[clients]]` entries (e.g. mounted from a Kubernetes Secret).
    #[serde(default)]
    pub clients_file: Option<PathBuf>,
    /// JWT issuers whose tokens authenticate clients (`config/auth.rs`).
    #[serde(default)]
    pub jwt: Vec<JwtIssuerConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request head (request line + headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Largest request body in bytes; larger gets 413.
    pub max_body_bytes: u64,
    /// A client must send its complete request head within this time; an idle HTTP/1.1
    /// keep-alive connection is closed after this long too.
    #[serde(with = "dur")]
    pub header_read_timeout: Duration,
    /// Requests in flight across all clients; more get 503.
    pub max_concurrent_requests: usize,
    /// Requests in flight for a client without its own `max_concurrent`; more get 429
    /// `concurrency_limit_exceeded`. Unset: a quarter of `max_concurrent_requests` (at least 1),
    /// so one key cannot take every slot.
    pub client_max_concurrent: Option<usize>,
    /// HTTP/2 concurrent streams per connection.
    pub max_h2_streams: u32,
    /// Open client connections; a connection beyond this is closed at once.
    pub max_connections: usize,
    /// Time allowed to receive a whole request body.
    #[serde(with = "dur")]
    pub body_timeout: Duration,
    /// A connection whose response writes make no progress this long (the client stopped
    /// reading) is closed.
    #[serde(with = "dur")]
    pub send_timeout: Duration,
    /// Open client connections from one IP address; one beyond this is closed at once (0 = off).
    pub max_connections_per_ip: usize,
    /// Refused (unauthenticated) requests one IP address may make per minute with a `denied`
    /// record each (also the burst); beyond it 429 and a `denied_summary` count (0 = off).
    pub unauthenticated_rpm_per_ip: u32,
    /// An HTTP/2 connection with no open stream this long is sent GOAWAY and closed.
    #[serde(with = "dur")]
    pub idle_timeout: Duration,
}

impl LimitsConfig {
    /// The concurrency of a client that sets no `max_concurrent` of its own.
    pub fn client_concurrency_default(&self) -> usize {
        self.client_max_concurrent
            .unwrap_or((self.max_concurrent_requests / 4).max(1))
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: 16 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_requests: 4096,
            client_max_concurrent: None,
            max_h2_streams: 128,
            max_connections: 10_000,
            body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            max_connections_per_ip: 256,
            unauthenticated_rpm_per_ip: 60,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// Merge `[[clients]]` from `auth.clients_file`, if set.
    pub fn resolve_files(&mut self) -> Result<(), Vec<ConfigError>> {
        let Some(path) = self.auth.clients_file.clone() else {
            return Ok(());
        };
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ClientsFile {
            #[serde(default)]
            clients: Vec<ClientConfig>,
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            vec![ConfigError::new(
                "auth.clients_file",
                format!("cannot read {}: {e}", path.display()),
            )]
        })?;
        let file: ClientsFile = super::parse_as(&text).map_err(|errs| {
            errs.into_iter()
                .map(|e| {
                    ConfigError::new(
                        "auth.clients_file",
                        format!("{}: {}: {}", path.display(), e.field, e.message),
                    )
                })
                .collect::<Vec<_>>()
        })?;
        self.clients.extend(file.clients);
        Ok(())
    }
}

pub(super) fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}
pub(super) fn millis<const N: u64>() -> Duration {
    Duration::from_millis(N)
}

/// Durations as human strings: "250ms", "60s", "15m", "1h 30m".
pub(crate) mod dur {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}
