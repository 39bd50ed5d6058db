//! `audit verify --anchors SOURCE`: where to read anchors from. `file:PATH` (an export: one
//! object, an array, or JSON lines), `redis://…`/`rediss://…` (the `[ratelimit]` URL form; keys
//! `<prefix>:anchor:*`), or `vault:https://HOST:PORT/<mount>/<path>` (the `audit.anchor_vault_path`
//! form: one KV v2 secret per chain under it). Credentials come from files only
//! (`SourceFiles`), never from the argument or the environment.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Redis(String),
    Vault {
        address: String,
        mount: String,
        path: String,
    },
}

/// The files and names a source may need (`--anchors-*` options).
#[derive(Debug, Clone, Default)]
pub struct SourceFiles {
    /// Vault token (read-only access: `list` on `<mount>/metadata/<path>`, `read` below it).
    pub token_file: Option<PathBuf>,
    /// Redis password.
    pub password_file: Option<PathBuf>,
    /// CA bundle for `rediss://` or an `https://` Vault.
    pub ca_file: Option<PathBuf>,
    /// Redis key prefix (`ratelimit.key_prefix`).
    pub key_prefix: String,
}

const FORMS: &str =
    "expected file:PATH, redis://HOST:PORT/DB, rediss://…, or vault:https://HOST:PORT/MOUNT/PATH";

impl Source {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("file:") {
            if p.is_empty() {
                return Err(format!("--anchors {s:?}: no path; {FORMS}"));
            }
            return Ok(Self::File(p.into()));
        }
        if s.starts_with("redis://") || s.starts_with("rediss://") {
            crate::fleet::parse_url(s).map_err(|e| {
                format!(
                    "--anchors: {}",
                    e.trim_start_matches("ratelimit.redis_url: ")
                )
            })?;
            return Ok(Self::Redis(s.into()));
        }
        if let Some(rest) = s.strip_prefix("vault:") {
            // The argument is not repeated: a mistyped one could hold a credential.
            let bad = |why: &str| format!("--anchors vault:…: {why}; {FORMS}");
            let after = rest
                .strip_prefix("https://")
                .or_else(|| rest.strip_prefix("http://"))
                .ok_or_else(|| bad("the Vault address must start with http:// or https://"))?;
            let (authority, path) = after
                .split_once('/')
                .ok_or_else(|| bad("no <mount>/<path> after the address"))?;
            if authority.is_empty() || authority.contains('@') {
                return Err(bad("the address must be scheme://host:port, without user@"));
            }
            let (mount, path) = crate::config::split_vault_path(path).map_err(|m| bad(&m))?;
            return Ok(Self::Vault {
                address: rest[..rest.len() - after.len() + authority.len()].to_string(),
                mount: mount.into(),
                path: path.into(),
            });
        }
        Err(format!("--anchors {s:?}: {FORMS}"))
    }
}

#[cfg(test)]
mod tests {
    use super::Source;

    #[test]
    fn anchor_sources_parse_and_bad_ones_say_which_forms_exist() {
        assert_eq!(
            Source::parse("file:/tmp/a.json").unwrap(),
            Source::File("/tmp/a.json".into())
        );
        assert_eq!(
            Source::parse("redis://127.0.0.1:6379/0").unwrap(),
            Source::Redis("redis://127.0.0.1:6379/0".into())
        );
        assert_eq!(
            Source::parse("vault:https://vault.example:8200/secret/nimgate/anchors").unwrap(),
            Source::Vault {
                address: "https://vault.example:8200".into(),
                mount: "secret".into(),
                path: "nimgate/anchors".into(),
            }
        );
        for bad in [
            "file:",
            "vault:vault.example/secret/a",
            "vault:http://h:1",
            "vault:http://h:1/secret",
            "vault:http://u:hunter2@h:1/secret/a",
            "s3://bucket",
        ] {
            let e = Source::parse(bad).unwrap_err();
            assert!(
                e.contains("expected file:PATH") && !e.contains("hunter2"),
                "{bad}: {e}"
            );
        }
        let e = Source::parse("redis://u:hunter2@h:1/0").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
