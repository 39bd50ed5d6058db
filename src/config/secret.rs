//! The `[secret]` schema: where the NIM key comes from (a file, or Vault with one of its auth
//! methods). Holds paths and names only, never a secret.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use super::types::{dur, millis, secs};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
#[expect(clippy::large_enum_variant, reason = "built once at start-up")]
pub enum SecretConfig {
    File(FileSecretConfig),
    Vault(VaultSecretConfig),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSecretConfig {
    pub path: PathBuf,
    /// RFC 6901 pointer into a JSON file (e.g. `/data/data/api_key`); absent = plain text file.
    #[serde(default)]
    pub json_pointer: Option<String>,
    /// How often the file is checked for changes (content hash, so symlink swaps count).
    #[serde(default = "millis::<1000>", with = "dur")]
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSecretConfig {
    pub address: String,
    #[serde(default = "default_kv_mount")]
    pub mount: String,
    pub path: String,
    #[serde(default = "default_kv_version")]
    pub kv_version: u8,
    pub field: String,
    /// Pin a KV v2 version instead of following the latest.
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default = "secs::<60>", with = "dur")]
    pub refresh: Duration,
    #[serde(default = "secs::<900>", with = "dur")]
    pub max_staleness: Duration,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Timeout of each Vault HTTP call.
    #[serde(default = "secs::<10>", with = "dur")]
    pub timeout: Duration,
    pub auth: VaultAuthConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum VaultAuthConfig {
    Token(TokenAuthConfig),
    Approle(AppRoleAuthConfig),
    Kubernetes(KubernetesAuthConfig),
    /// Vault's `jwt` auth method (e.g. a projected token Vault checks against a JWKS).
    Jwt(JwtAuthConfig),
    /// No token: `address` is a Vault Proxy/Agent listener adding its auto-auth token.
    Agent(AgentAuthConfig),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthConfig {
    pub role: String,
    pub jwt_file: PathBuf,
    #[serde(default = "default_jwt_mount")]
    pub mount: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentAuthConfig {}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenAuthConfig {
    pub token_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRoleAuthConfig {
    pub role_id_file: PathBuf,
    pub secret_id_file: PathBuf,
    /// `secret_id_file` holds a response-wrapping token (`-wrap-ttl`): unwrapped once.
    #[serde(default)]
    pub secret_id_wrapped: bool,
    #[serde(default = "default_approle_mount")]
    pub mount: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesAuthConfig {
    pub role: String,
    #[serde(default = "default_jwt_file")]
    pub jwt_file: PathBuf,
    #[serde(default = "default_k8s_mount")]
    pub mount: String,
}

fn default_kv_mount() -> String {
    "secret".into()
}
fn default_kv_version() -> u8 {
    2
}
fn default_approle_mount() -> String {
    "approle".into()
}
fn default_jwt_mount() -> String {
    "jwt".into()
}
fn default_k8s_mount() -> String {
    "kubernetes".into()
}
fn default_jwt_file() -> PathBuf {
    "/var/run/secrets/kubernetes.io/serviceaccount/token".into()
}
