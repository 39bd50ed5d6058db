//! Where anchors live. Redis: the `[ratelimit]` connection (`fleet::resp`, a client of its own
//! so anchoring never touches the rate limiter's pool or its outage state), one key per chain
//! `<key_prefix>:anchor:<chain id>` holding the anchor's JSON, no TTL. Vault: KV v2 through a
//! `VaultSource` of its own built from the first Vault upstream's settings (its own token: the
//! key's refresher keeps its source to itself), one secret per chain `<path>/<chain id>` (each
//! write a new version), so a fleet's writers never overwrite each other and the policy needs
//! only `create`/`update` on `<mount>/data/<path>/*`. File: read-only, for `verify`.

use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::Mutex;

use super::{decode, Anchor, Source, SourceFiles};
use crate::audit::Record;
use crate::config::{Config, RateLimitConfig, VaultAuthConfig, VaultSecretConfig};
use crate::fleet::resp::{Client, Reply};
use crate::secret::vault::VaultSource;

pub enum Store {
    Redis {
        client: std::sync::Arc<Client>,
        prefix: String,
        url: String,
    },
    Vault {
        source: Mutex<Box<VaultSource>>,
        address: String,
        mount: String,
        path: String,
    },
    File(PathBuf),
}

/// The longest one Redis anchor call may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys asked for per `SCAN` step (replies are capped at `resp`'s array limit).
const SCAN_COUNT: &str = "100";

fn redis(rl: &RateLimitConfig, timeout: Duration) -> Result<Store, String> {
    let url = rl.redis_url.clone().unwrap_or_default();
    let target = crate::fleet::target(rl)?;
    Ok(Store::Redis {
        client: Client::new(target, timeout),
        prefix: rl.key_prefix.clone(),
        url,
    })
}

impl Store {
    /// The store `audit.anchor` names (validated config: the settings it needs are there).
    pub fn for_config(cfg: &Config) -> Result<Self, String> {
        match cfg.audit.anchor {
            Some(crate::config::AnchorStore::Redis) => {
                let t = cfg.audit.anchor_interval.min(REDIS_TIMEOUT);
                redis(&cfg.ratelimit, t.max(cfg.ratelimit.timeout))
            }
            Some(crate::config::AnchorStore::Vault) => {
                let (v, _) = cfg
                    .anchor_vault()
                    .ok_or("audit.anchor: no upstream's secret source is vault")?;
                let p = cfg.audit.anchor_vault_path.as_deref().unwrap_or_default();
                let (mount, path) = crate::config::split_vault_path(p)
                    .map_err(|m| format!("audit.anchor_vault_path: {m}"))?;
                Ok(Self::Vault {
                    source: Mutex::new(Box::new(VaultSource::new(v)?)),
                    address: v.address.clone(),
                    mount: mount.into(),
                    path: path.into(),
                })
            }
            None => Err("audit.anchor is not set".into()),
        }
    }

    /// The store `verify --anchors` names, with the credential files it was given.
    pub fn open(source: &Source, files: &SourceFiles) -> Result<Self, String> {
        match source {
            Source::File(p) => Ok(Self::File(p.clone())),
            Source::Redis(url) => {
                let rl = RateLimitConfig {
                    redis_url: Some(url.clone()),
                    redis_password_file: files.password_file.clone(),
                    ca_file: files.ca_file.clone(),
                    key_prefix: files.key_prefix.clone(),
                    ..RateLimitConfig::default()
                };
                redis(&rl, REDIS_TIMEOUT).map_err(|e| {
                    e.replace("ratelimit.redis_password_file", "--anchors-password-file")
                        .replace("ratelimit.ca_file", "--anchors-ca-file")
                        .replace("ratelimit.redis_url", "--anchors")
                })
            }
            Source::Vault {
                address,
                mount,
                path,
            } => {
                let token_file = files.token_file.clone().ok_or(
                    "--anchors vault:… needs --anchors-token-file (a token allowed to list and read the anchors)",
                )?;
                let cfg = VaultSecretConfig {
                    address: address.clone(),
                    mount: mount.clone(),
                    path: path.clone(),
                    kv_version: 2,
                    field: String::new(),
                    version: None,
                    refresh: Duration::from_secs(60),
                    max_staleness: Duration::from_secs(900),
                    namespace: None,
                    ca_file: files.ca_file.clone(),
                    timeout: Duration::from_secs(10),
                    auth: VaultAuthConfig::Token(crate::config::TokenAuthConfig { token_file }),
                };
                Ok(Self::Vault {
                    source: Mutex::new(Box::new(VaultSource::new(&cfg)?)),
                    address: address.clone(),
                    mount: mount.clone(),
                    path: path.clone(),
                })
            }
        }
    }

    /// For logs, records and reports (no credential: URLs carry none).
    pub fn describe(&self) -> String {
        match self {
            Self::Redis { url, prefix, .. } => format!("redis {url} ({prefix}:anchor:*)"),
            Self::Vault {
                address,
                mount,
                path,
                ..
            } => format!("vault {address} {mount}/{path}"),
            Self::File(p) => format!("file {}", p.display()),
        }
    }

    fn redis_key(prefix: &str, chain: &str) -> String {
        format!("{prefix}:anchor:{chain}")
    }

    /// Write one anchor (replacing the chain's previous one; Vault keeps it as a version).
    pub async fn put(&self, a: &Anchor) -> Result<(), String> {
        match self {
            Self::Redis { client, prefix, .. } => {
                let key = Self::redis_key(prefix, &a.chain);
                let json = a.to_json();
                match client
                    .call(&[b"SET", key.as_bytes(), json.as_bytes()])
                    .await
                {
                    Ok(Reply::Simple(_)) => Ok(()),
                    Ok(Reply::Error(e)) => Err(format!("redis SET {key}: {e}")),
                    Ok(_) => Err(format!("redis SET {key}: unexpected reply")),
                    Err(e) => Err(format!("redis SET {key}: {e}")),
                }
            }
            Self::Vault {
                source,
                mount,
                path,
                ..
            } => {
                let data: Value = serde_json::from_str(&a.to_json()).map_err(|e| e.to_string())?;
                let at = format!("{path}/{}", a.chain);
                source.lock().await.kv2_write(mount, &at, &data).await
            }
            Self::File(p) => Err(format!("{} is read-only here", p.display())),
        }
    }

    /// Every anchor in the store.
    pub async fn list(&self) -> Result<Vec<Anchor>, String> {
        match self {
            Self::File(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                decode(&text).map_err(|e| format!("{}: {e}", p.display()))
            }
            Self::Redis { client, prefix, .. } => {
                let pattern = format!("{prefix}:anchor:*");
                let mut keys = Vec::new();
                let mut cursor = "0".to_string();
                loop {
                    let args: [&[u8]; 6] = [
                        b"SCAN",
                        cursor.as_bytes(),
                        b"MATCH",
                        pattern.as_bytes(),
                        b"COUNT",
                        SCAN_COUNT.as_bytes(),
                    ];
                    let reply = client
                        .call(&args)
                        .await
                        .map_err(|e| format!("redis SCAN: {e}"))?;
                    let Reply::Array(mut parts) = reply else {
                        return Err("redis SCAN: unexpected reply".into());
                    };
                    let (Some(Reply::Array(found)), Some(Reply::Bulk(Some(next)))) =
                        (parts.pop(), parts.pop())
                    else {
                        return Err("redis SCAN: unexpected reply".into());
                    };
                    keys.extend(found.into_iter().filter_map(|k| match k {
                        Reply::Bulk(Some(k)) => String::from_utf8(k).ok(),
                        _ => None,
                    }));
                    cursor = String::from_utf8_lossy(&next).into_owned();
                    if cursor == "0" {
                        break;
                    }
                }
                keys.sort();
                keys.dedup();
                let mut out = Vec::new();
                for k in keys {
                    match client.call(&[b"GET", k.as_bytes()]).await {
                        Ok(Reply::Bulk(Some(v))) => {
                            let text = String::from_utf8_lossy(&v);
                            out.extend(decode(&text).map_err(|e| format!("redis {k}: {e}"))?);
                        }
                        Ok(Reply::Bulk(None)) => {}
                        Ok(_) => return Err(format!("redis GET {k}: unexpected reply")),
                        Err(e) => return Err(format!("redis GET {k}: {e}")),
                    }
                }
                Ok(out)
            }
            Self::Vault {
                source,
                mount,
                path,
                ..
            } => {
                let mut src = source.lock().await;
                let mut out = Vec::new();
                for key in src.kv2_list(mount, path).await? {
                    if key.ends_with('/') {
                        continue;
                    }
                    let data = src.kv2_read(mount, &format!("{path}/{key}")).await?;
                    let mut got = decode(&data.to_string())
                        .map_err(|e| format!("vault {mount}/{path}/{key}: {e}"))?;
                    out.append(&mut got);
                }
                Ok(out)
            }
        }
    }

    /// Vault events (logins, renewals) since the last call, for the audit trail.
    pub async fn take_events(&self) -> Vec<Record> {
        match self {
            Self::Vault { source, .. } => source.lock().await.take_events(),
            _ => Vec::new(),
        }
    }
}
