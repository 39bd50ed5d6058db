//! Environment overlay: `NIMGATE_*` variables override *non-secret* settings only. There is
//! deliberately no variable for any credential: secrets come from files or Vault.

use super::types::Config;
use super::ConfigError;

pub fn apply_overlay(
    cfg: &mut Config,
    get: impl Fn(&str) -> Option<String>,
) -> Result<(), Vec<ConfigError>> {
    let mut errs = Vec::new();
    if let Some(v) = get("NIMGATE_SERVER_LISTEN") {
        match v.parse() {
            Ok(a) => cfg.server.listen = a,
            Err(_) => errs.push(ConfigError::new(
                "server.listen (NIMGATE_SERVER_LISTEN)",
                format!("{v:?} is not an ip:port address"),
            )),
        }
    }
    if let Some(v) = get("NIMGATE_ADMIN_LISTEN") {
        match v.parse() {
            Ok(a) => cfg.admin.listen = a,
            Err(_) => errs.push(ConfigError::new(
                "admin.listen (NIMGATE_ADMIN_LISTEN)",
                format!("{v:?} is not an ip:port address"),
            )),
        }
    }
    if let Some(v) = get("NIMGATE_UPSTREAM_URL") {
        match &mut cfg.upstream {
            Some(u) => {
                u.url = v;
                u.urls.clear();
            }
            None => errs.push(ConfigError::new(
                "upstream.url (NIMGATE_UPSTREAM_URL)",
                "set, but the config has no [upstream] (use [[upstreams]] urls)",
            )),
        }
    }
    if let Some(v) = get("NIMGATE_AUDIT_PATH") {
        cfg.audit.path = v;
    }
    if let Some(v) = get("NIMGATE_VAULT_ADDRESS") {
        match &mut cfg.secret {
            Some(super::SecretConfig::Vault(vc)) => vc.address = v,
            _ => errs.push(ConfigError::new(
                "secret.address (NIMGATE_VAULT_ADDRESS)",
                "set, but secret.source is not \"vault\"",
            )),
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}
