//! The `[audit]` schema: where the trail goes, how it is synced and rotated, and the optional
//! chain-head anchoring (`anchor*`, `audit/anchor`): its validation lives here too, naming the
//! field. Holds paths and names only, never a secret.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use super::types::{dur, Config};
use super::SecretConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    Batch,
    Interval,
    Never,
}

/// Where the chain head is anchored (`audit.anchor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnchorStore {
    /// KV v2 in the Vault of the first upstream whose secret source is Vault.
    Vault,
    /// The `[ratelimit]` Redis connection.
    Redis,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `false` turns the audit trail off (benchmarks only; a warning is logged).
    pub enabled: bool,
    /// File path, or `-` for stdout.
    pub path: String,
    pub fsync: FsyncPolicy,
    #[serde(with = "dur")]
    pub fsync_interval: Duration,
    /// Rotate when the file would grow past this many bytes (0 = never; default 100 MiB).
    pub max_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` … `.N`).
    pub keep: usize,
    /// Longest a request waits for its `use` record to be written before it is refused (503).
    #[serde(with = "dur")]
    pub max_wait: Duration,
    /// Records that may wait for the writer at once.
    pub queue: usize,
    /// Key for an HMAC-SHA256 chain (read from this file at start; never from the environment).
    /// Unset: plain SHA-256 links.
    pub chain_key_file: Option<PathBuf>,
    /// This gateway's name in the `chain` id of its records (default: the host name, i.e. the
    /// pod name in Kubernetes); a start nonce is appended.
    pub instance: Option<String>,
    /// Free space the audit volume keeps for `use` records: below it, records an
    /// unauthenticated peer causes (`denied`) are only counted (`denied_summary`).
    pub min_free_bytes: u64,
    /// Write the synced chain head to this store every `anchor_interval` (absent: off, no task).
    pub anchor: Option<AnchorStore>,
    #[serde(with = "dur")]
    pub anchor_interval: Duration,
    /// With `anchor = "vault"`: `<kv v2 mount>/<path>`; each chain writes `<path>/<chain id>`.
    pub anchor_vault_path: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "-".into(),
            fsync: FsyncPolicy::Interval,
            fsync_interval: Duration::from_secs(1),
            max_bytes: 100 * 1024 * 1024,
            keep: 10,
            max_wait: Duration::from_secs(2),
            queue: 8192,
            chain_key_file: None,
            instance: None,
            min_free_bytes: 64 * 1024 * 1024,
            anchor: None,
            anchor_interval: Duration::from_secs(10),
            anchor_vault_path: None,
        }
    }
}

/// `<mount>/<path…>` → (mount, path): two or more non-empty segments of `[A-Za-z0-9._-]`, no
/// `.`/`..` segment (the path goes into a URL and a Vault policy).
pub fn split_vault_path(p: &str) -> Result<(&str, &str), String> {
    let p = p.trim_matches('/');
    let ok_segment = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    match p.split_once('/') {
        Some((mount, path)) if ok_segment(mount) && path.split('/').all(ok_segment) => {
            Ok((mount, path))
        }
        _ => Err(format!(
            "{p:?} must be <kv v2 mount>/<path> (e.g. \"secret/nimgate/anchors\"), segments of letters, digits, '.', '_' or '-'"
        )),
    }
}

impl Config {
    /// The Vault of the first upstream whose secret source is Vault (where `anchor = "vault"`
    /// writes), with that upstream's secret field name.
    pub fn anchor_vault(&self) -> Option<(&super::VaultSecretConfig, String)> {
        self.upstream_list()
            .into_iter()
            .find_map(|u| match u.secret {
                Some(SecretConfig::Vault(v)) => Some((v, u.secret_field.clone())),
                _ => None,
            })
    }

    /// `audit.anchor*` (the interval's bounds are in `bounds`).
    pub(super) fn validate_anchor(&self, err: &mut impl FnMut(&str, String)) {
        let a = &self.audit;
        if a.anchor_vault_path.is_some() && a.anchor != Some(AnchorStore::Vault) {
            err(
                "audit.anchor_vault_path",
                "is only used with anchor = \"vault\"".into(),
            );
        }
        let Some(store) = a.anchor else { return };
        if !a.enabled {
            err(
                "audit.anchor",
                "needs the audit trail (audit.enabled = true)".into(),
            );
        }
        if a.fsync == FsyncPolicy::Never {
            err(
                "audit.anchor",
                "needs audit.fsync = \"batch\" or \"interval\": only a synced head is anchored, so with \"never\" there is none".into(),
            );
        }
        match store {
            AnchorStore::Redis => {
                if self.ratelimit.redis_url.is_none() {
                    err(
                        "audit.anchor",
                        "\"redis\" uses the [ratelimit] Redis connection: set ratelimit.redis_url (and redis_password_file, ca_file as needed)".into(),
                    );
                }
            }
            AnchorStore::Vault => {
                match &a.anchor_vault_path {
                    None => err(
                        "audit.anchor_vault_path",
                        "required with anchor = \"vault\"".into(),
                    ),
                    Some(p) => {
                        if let Err(m) = split_vault_path(p) {
                            err("audit.anchor_vault_path", m);
                        }
                    }
                }
                match self.anchor_vault() {
                    None => err(
                        "audit.anchor",
                        "\"vault\" uses the Vault of the first upstream whose secret source is vault; no upstream has one".into(),
                    ),
                    Some((v, field)) => {
                        if let super::VaultAuthConfig::Approle(r) = &v.auth {
                            if r.secret_id_wrapped {
                                err(
                                    "audit.anchor",
                                    format!("\"vault\" logs in with {field}.auth, whose wrapped secret-id can be unwrapped only once (by the key's refresher): use an unwrapped secret-id, a token file or another auth method"),
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_vault_path;
    use crate::config::parse;

    const VAULT: &str = "[secret]\nsource = \"vault\"\naddress = \"http://127.0.0.1:8200\"\npath = \"nim\"\nfield = \"k\"\n\
                         [secret.auth]\nmethod = \"token\"\ntoken_file = \"/t\"\n";
    const FILE: &str = "[secret]\nsource = \"file\"\npath = \"/k\"\n";

    /// Fields of every problem of a config with `secret` and `[audit]` keys `audit`, then `tail`.
    fn fields(secret: &str, audit: &str, tail: &str) -> Vec<String> {
        let d = "0".repeat(63) + "1";
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:8000\"\n{secret}[[clients]]\nid = \"a\"\n\
             key_sha256 = \"{d}\"\n[audit]\npath = \"/a\"\n{audit}\n{tail}"
        );
        match parse(&text) {
            Ok(c) => c.validate().into_iter().map(|e| e.field).collect(),
            Err(e) => e.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn anchor_settings_are_validated_naming_the_field() {
        let redis = "[ratelimit]\nredis_url = \"redis://127.0.0.1:6379/0\"";
        assert!(fields(FILE, "", "").is_empty());
        assert!(fields(FILE, "anchor = \"redis\"", redis).is_empty());
        let vault = "anchor = \"vault\"\nanchor_vault_path = \"secret/nimgate/anchors\"";
        assert!(fields(VAULT, vault, "").is_empty());
        // Redis without the [ratelimit] connection; Vault without a Vault upstream or a path.
        assert_eq!(fields(FILE, "anchor = \"redis\"", ""), ["audit.anchor"]);
        assert_eq!(fields(FILE, vault, ""), ["audit.anchor"]);
        assert_eq!(
            fields(VAULT, "anchor = \"vault\"", ""),
            ["audit.anchor_vault_path"]
        );
        let bad_path = "anchor = \"vault\"\nanchor_vault_path = \"anchors\"";
        assert_eq!(fields(VAULT, bad_path, ""), ["audit.anchor_vault_path"]);
        let stray = "anchor_vault_path = \"secret/x\"";
        assert_eq!(fields(VAULT, stray, ""), ["audit.anchor_vault_path"]);
        // Nothing synced, nothing to anchor; the interval is bounded.
        let never = "anchor = \"redis\"\nfsync = \"never\"";
        assert_eq!(fields(FILE, never, redis), ["audit.anchor"]);
        let fast = "anchor = \"redis\"\nanchor_interval = \"100ms\"";
        assert_eq!(fields(FILE, fast, redis), ["audit.anchor_interval"]);
        let slow = "anchor = \"redis\"\nanchor_interval = \"2h\"";
        assert_eq!(fields(FILE, slow, redis), ["audit.anchor_interval"]);
        let unknown = fields(FILE, "anchor = \"s3\"", "");
        assert!(
            unknown.len() == 1 && unknown[0].starts_with("audit.anchor"),
            "{unknown:?}"
        );
        // A wrapped secret-id is single use: the key's refresher needs it.
        let wrapped = VAULT.replace(
            "method = \"token\"\ntoken_file = \"/t\"",
            "method = \"approle\"\nrole_id_file = \"/r\"\nsecret_id_file = \"/s\"\nsecret_id_wrapped = true",
        );
        assert_eq!(fields(&wrapped, vault, ""), ["audit.anchor"]);
    }

    #[test]
    fn anchor_vault_paths_split_into_mount_and_path() {
        assert_eq!(
            split_vault_path("secret/nimgate/anchors").unwrap(),
            ("secret", "nimgate/anchors")
        );
        assert_eq!(split_vault_path("/kv/a/").unwrap(), ("kv", "a"));
        for bad in [
            "secret",
            "secret/",
            "secret/../x",
            "a//b",
            "a/b c",
            "a/b?x=1",
        ] {
            assert!(split_vault_path(bad).is_err(), "{bad}");
        }
    }
}
