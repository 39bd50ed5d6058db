//! Where the NIM key comes from and where it lives.
//!
//! A `SecretSource` fetches the current key (file, Vault). The `refresher` task polls it, and
//! `SecretStore` validates a new key fully and then publishes it with one `ArcSwap::store`; each
//! request loads the key once. The key exists only in process memory, as `SecretString` plus
//! the prebuilt upstream header value.

pub mod file;
pub mod refresher;
pub mod store;
pub mod vault;

use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::time::Duration;

pub use store::{KeyMaterial, SecretStore};

/// A secret-source operation whose failures are counted (metrics label `op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretOp {
    /// Reading the key (any source).
    Fetch,
    /// A Vault token renewal.
    Renew,
    /// A Vault login (or token-file read).
    Login,
}

impl SecretOp {
    pub const ALL: [Self; 3] = [Self::Fetch, Self::Renew, Self::Login];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fetch => "fetch",
            Self::Renew => "renew",
            Self::Login => "login",
        }
    }
}

/// A key as fetched, before validation.
pub struct Fetched {
    pub secret: SecretString,
    /// Source-defined version: KV v2 version number, or a content hash.
    pub version: String,
    /// Vault's `request_id` of the read (Vault sources), for the audit record.
    pub vault_request_id: Option<std::sync::Arc<str>>,
    /// Accessor of the Vault token that read it (Vault sources; not a credential).
    pub vault_accessor: Option<std::sync::Arc<str>>,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("secret", &"[REDACTED]")
            .field("version", &self.version)
            .field("vault_request_id", &self.vault_request_id)
            .field("vault_accessor", &self.vault_accessor)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretErrorKind {
    /// Source unreachable or failing (network, 5xx, unreadable file): keep the cached key.
    Unavailable,
    /// Access to the secret itself was refused (403 on the secret path): evict the cached key.
    Forbidden,
    /// The secret was fetched but is not a usable key (empty, missing field, bad JSON).
    Invalid,
}

/// A secret-source failure. `message` never contains secret material.
#[derive(Debug, Clone)]
pub struct SecretError {
    pub kind: SecretErrorKind,
    pub message: String,
}

impl SecretError {
    pub fn new(kind: SecretErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(SecretErrorKind::Unavailable, m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(SecretErrorKind::Invalid, m)
    }
}

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

/// One place the key can come from.
pub trait SecretSource: Send + 'static {
    /// `file` or `vault`, for logs and audit records.
    fn kind(&self) -> &'static str;
    /// Fetch the current key (doing any login/renewal that is due first).
    fn fetch(&mut self) -> BoxFuture<'_, Result<Fetched, SecretError>>;
    /// Time until the next scheduled fetch after a successful one.
    fn interval(&self) -> Duration;
    /// Secret-source events (logins, renewals) that happened during the last `fetch`,
    /// for the audit trail.
    fn drain_events(&mut self) -> Vec<crate::audit::Record> {
        Vec::new()
    }
}

/// The source `[secret]` describes (Vault: the client is built, nothing is sent yet).
pub fn source_for(cfg: &crate::config::SecretConfig) -> Result<Box<dyn SecretSource>, String> {
    Ok(match cfg {
        crate::config::SecretConfig::File(f) => Box::new(file::FileSource::new(f)),
        crate::config::SecretConfig::Vault(v) => Box::new(vault::VaultSource::new(v)?),
    })
}

/// `nimgate check --online`: build the source, log in and fetch the key once, validate it as
/// the store would. `Ok` describes what was read by version and fingerprint, never the key (nor
/// its length); `Err` is the cause, naming the source.
pub async fn check_once(cfg: &crate::config::SecretConfig) -> Result<String, String> {
    let where_ = match cfg {
        crate::config::SecretConfig::File(f) => format!("file {}", f.path.display()),
        crate::config::SecretConfig::Vault(v) => format!(
            "vault {} ({}/{}, field {:?})",
            v.address, v.mount, v.path, v.field
        ),
    };
    let mut source = source_for(cfg)?;
    let fetched = source
        .fetch()
        .await
        .map_err(|e| format!("secret: {where_}: {}", e.message))?;
    validate_key(fetched.secret.expose_secret())
        .map_err(|e| format!("secret: {where_}: {}", e.message))?;
    Ok(format!(
        "secret: {where_}: key read, version {}, fingerprint {}",
        fetched.version,
        fingerprint(&fetched.secret)
    ))
}

/// Overwrite every string in a parsed JSON document (a fetched secret's envelope) before it is
/// dropped, so the key does not linger in freed memory.
pub fn scrub(v: &mut serde_json::Value) {
    use zeroize::Zeroize;
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(scrub),
        serde_json::Value::Object(o) => o.values_mut().for_each(scrub),
        _ => {}
    }
}

/// Check a key before it may replace the current one.
pub fn validate_key(key: &str) -> Result<(), SecretError> {
    if key.is_empty() {
        return Err(SecretError::invalid("key is empty"));
    }
    if key.len() > 8192 {
        return Err(SecretError::invalid("key is longer than 8192 bytes"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SecretError::invalid(
            "key contains whitespace, control or non-ASCII characters",
        ));
    }
    Ok(())
}

/// Short, stable tag of a key for audit records: the first 16 hex chars of
/// SHA-256("nimgate-key-fingerprint\0" ‖ key). Identifies a key version; reveals nothing usable.
pub fn fingerprint(key: &SecretString) -> String {
    let mut h = Sha256::new();
    h.update(b"nimgate-key-fingerprint\0");
    h.update(key.expose_secret().as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// Content hash used as `key_version` where the source has no version of its own.
pub fn content_version(key: &SecretString) -> String {
    format!("sha256:{}", &fingerprint(key)[..12])
}
