//! `source = "vault"`: the key in a Vault KV (v1 or v2) secret, through a `vaultrs` client.
//!
//! `login` gets and keeps a token (token file, AppRole with a plain or response-wrapped
//! secret-id, Kubernetes, jwt — every credential read from a file, never from the environment or
//! config text; `agent` holds none, a local Vault Proxy adds its own) on the pure `schedule`;
//! every record names Vault's `request_id` and the token's accessor; `client` makes the
//! raw calls; `kv` writes, lists and reads KV v2 entries for chain-head anchoring. Reads use a
//! tolerant raw endpoint so that servers returning KV v2 data without `metadata` still work.
//! A 403 on the read triggers one fresh login and retry, then eviction.
//!
//! The Vault token lives in the vaultrs client (whose settings type derives `Debug`): this module
//! never formats the client, and the logging filter silences vaultrs/rustify/reqwest entirely.

mod client;
mod kv;
mod login;
mod schedule;

use futures_util::future::BoxFuture;
use rustify::enums::RequestMethod;
use secrecy::SecretString;
use serde_json::Value;
use std::time::{Duration, Instant};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use zeroize::Zeroizing;

use super::{content_version, Fetched, SecretError, SecretErrorKind, SecretSource};
use crate::audit::{Event, Record};
use crate::config::{VaultAuthConfig, VaultSecretConfig};
use client::{call, CallError};
use schedule::TokenSchedule;

pub struct VaultSource {
    cfg: VaultSecretConfig,
    client: VaultClient,
    token: Option<TokenSchedule>,
    token_file_digest: Option<String>,
    /// Wrapped secret-id: (digest of the wrapping token it came from, the secret-id).
    unwrapped: Option<(String, Zeroizing<String>)>,
    /// Digest of a wrapping token Vault refused: not sent again until the file changes.
    unwrap_refused: Option<String>,
    /// Vault's `request_id` of the last call, for the next record (taken by `event`).
    last_request_id: Option<String>,
    /// Accessor of the current token (from the login or lookup-self response).
    accessor: Option<String>,
    events: Vec<Record>,
}

impl std::fmt::Debug for VaultSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSource")
            .field("address", &self.cfg.address)
            .field("path", &self.cfg.path)
            .finish_non_exhaustive()
    }
}

impl VaultSource {
    pub fn new(cfg: &VaultSecretConfig) -> Result<Self, String> {
        let mut b = VaultClientSettingsBuilder::default();
        // Every setting explicit, so nothing is taken from VAULT_* environment variables.
        b.address(cfg.address.as_str())
            .token("")
            .ca_certs(
                cfg.ca_file
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>(),
            )
            .identity(None)
            .verify(true)
            .timeout(Some(cfg.timeout))
            .namespace(cfg.namespace.clone());
        let settings = b.build().map_err(|e| format!("secret.address: {e}"))?;
        let mut client = VaultClient::new(settings)
            .map_err(|e| format!("secret: cannot build Vault client: {e}"))?;
        client.http = client::http_client(&cfg.address, cfg.ca_file.as_deref(), cfg.timeout)?;
        Ok(Self {
            cfg: cfg.clone(),
            client,
            token: None,
            token_file_digest: None,
            unwrapped: None,
            unwrap_refused: None,
            last_request_id: None,
            accessor: None,
            events: Vec::new(),
        })
    }

    fn event(&mut self, name: Event, detail: String, reason: Option<String>) {
        let mut r = Record::event(name);
        r.source = Some("vault");
        r.detail = Some(detail);
        r.reason = reason;
        r.vault_request_id = self.last_request_id.take().map(Into::into);
        r.vault_accessor = self.accessor.as_deref().map(Into::into);
        self.events.push(r);
    }

    async fn read_secret(&self) -> Result<Fetched, CallError> {
        let mount = self.cfg.mount.trim_matches('/');
        let path = self.cfg.path.trim_matches('/');
        let (url, query) = if self.cfg.kv_version == 2 {
            (
                format!("{mount}/data/{path}"),
                self.cfg.version.map(|v| format!("version={v}")),
            )
        } else {
            (format!("{mount}/{path}"), None)
        };
        let mut v = call(&self.client, RequestMethod::GET, url, query, None).await?;
        let version = v["data"]["metadata"]["version"].as_u64();
        let request_id: Option<std::sync::Arc<str>> = v["request_id"].as_str().map(Into::into);
        let data = if self.cfg.kv_version == 2 {
            &mut v["data"]["data"]
        } else {
            &mut v["data"]
        };
        let field = &self.cfg.field;
        let taken = data.get_mut(field).map(Value::take);
        super::scrub(&mut v);
        let secret = match taken {
            Some(Value::String(mut k)) => {
                // Trimmed exactly as a key file is: `vault kv put … api_key=-` after a paste and
                // Ctrl-D stores `key\n`.
                let keep = k.trim_end_matches(['\n', '\r']).len();
                let trimmed = k[..keep].to_string();
                zeroize::Zeroize::zeroize(&mut k);
                SecretString::from(trimmed)
            }
            Some(mut other) => {
                super::scrub(&mut other);
                return Err(CallError::Parse(format!("field {field:?} is not a string")));
            }
            None => return Err(CallError::Parse(format!("secret has no field {field:?}"))),
        };
        let version = match version {
            Some(n) if self.cfg.kv_version == 2 => n.to_string(),
            _ => content_version(&secret),
        };
        Ok(Fetched {
            secret,
            version,
            vault_request_id: request_id,
            vault_accessor: self.accessor.as_deref().map(Into::into),
        })
    }

    async fn fetch_inner(&mut self) -> Result<Fetched, SecretError> {
        self.ensure_token().await?;
        match self.read_secret().await {
            Ok(f) => Ok(f),
            Err(CallError::Forbidden) => {
                self.relogin().await?;
                match self.read_secret().await {
                    Ok(f) => Ok(f),
                    Err(CallError::Forbidden) => Err(SecretError::new(
                        SecretErrorKind::Forbidden,
                        format!(
                            "403 reading {}/{}: access to the secret is denied",
                            self.cfg.mount, self.cfg.path
                        ),
                    )),
                    Err(e) => Err(map_read_err(e, &self.cfg)),
                }
            }
            Err(e) => Err(map_read_err(e, &self.cfg)),
        }
    }
}

impl VaultSource {
    /// After a 403: the token may have expired or been revoked, so get a fresh one (re-read the
    /// token file, or log in again) before the one retry.
    async fn relogin(&mut self) -> Result<(), SecretError> {
        match &self.cfg.auth {
            VaultAuthConfig::Token(_) => {
                self.token_file_digest = None;
                self.ensure_token().await
            }
            _ => self.traced_login().await,
        }
    }
}

fn map_read_err(e: CallError, cfg: &VaultSecretConfig) -> SecretError {
    let what = format!("reading {}/{}", cfg.mount, cfg.path);
    match e {
        CallError::Parse(m) => SecretError::invalid(format!("{what}: {m}")),
        CallError::Status(404) => SecretError::invalid(format!("{what}: not found (404)")),
        e => SecretError::unavailable(format!("{what}: {e}")),
    }
}

impl SecretSource for VaultSource {
    fn kind(&self) -> &'static str {
        "vault"
    }

    fn fetch(&mut self) -> BoxFuture<'_, Result<Fetched, SecretError>> {
        Box::pin(self.fetch_inner())
    }

    fn interval(&self) -> Duration {
        let refresh = self.cfg.refresh;
        match &self.token {
            Some(t) if !t.from_file || t.renewable => {
                refresh.min(t.until_due(Instant::now(), Duration::from_millis(100)))
            }
            _ => refresh,
        }
    }

    fn drain_events(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.events)
    }
}
