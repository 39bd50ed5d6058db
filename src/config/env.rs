//! Environment overlay: `NIMGATE_*` variables override *non-secret* settings only. There is
//! deliberately no variable for any credential: secrets come from files or Vault. An error about
//! a setting a variable set names that variable (`name_overrides`), so the operator looks in the
//! environment, not in the file.

use super::types::Config;
use super::ConfigError;

/// Every setting the overlay can set, with its variable (README lists the same).
pub const OVERRIDES: [(&str, &str); 5] = [
    ("server.listen", "NIMGATE_SERVER_LISTEN"),
    ("admin.listen", "NIMGATE_ADMIN_LISTEN"),
    ("upstream.url", "NIMGATE_UPSTREAM_URL"),
    ("audit.path", "NIMGATE_AUDIT_PATH"),
    ("secret.address", "NIMGATE_VAULT_ADDRESS"),
];

fn set_by(field: &str, var: &str) -> String {
    format!("{field} (set by {var})")
}

pub fn apply_overlay(
    cfg: &mut Config,
    get: impl Fn(&str) -> Option<String>,
) -> Result<(), Vec<ConfigError>> {
    let mut errs = Vec::new();
    for (field, var, addr) in [
        (OVERRIDES[0].0, OVERRIDES[0].1, &mut cfg.server.listen),
        (OVERRIDES[1].0, OVERRIDES[1].1, &mut cfg.admin.listen),
    ] {
        if let Some(v) = get(var) {
            match v.parse() {
                Ok(a) => *addr = a,
                Err(_) => errs.push(ConfigError::new(
                    set_by(field, var),
                    format!(
                        "{v:?} is not an ip:port address{}",
                        super::hints::listen(&v)
                    ),
                )),
            }
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
                set_by("secret.address", "NIMGATE_VAULT_ADDRESS"),
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

/// Rename `field` to `field (set by VAR)` in each error about a setting an env variable set.
pub fn name_overrides(errs: &mut [ConfigError], get: impl Fn(&str) -> Option<String>) {
    for e in errs {
        let Some((field, var)) = OVERRIDES.iter().find(|(f, _)| {
            e.field == *f
                || e.field
                    .strip_prefix(f)
                    .is_some_and(|rest| rest.starts_with([' ', '.']))
        }) else {
            continue;
        };
        if get(var).is_some() && !e.field.contains(var) {
            e.field = set_by(field, var);
        }
    }
}

/// For a start-up error whose message begins with a setting an env variable set (`audit.path
/// /x: …`, `server.listen 1.2.3.4:80: …`): that variable.
pub fn override_behind(
    message: &str,
    get: impl Fn(&str) -> Option<String>,
) -> Option<&'static str> {
    OVERRIDES
        .iter()
        .find(|(field, var)| {
            message
                .strip_prefix(field)
                .is_some_and(|rest| rest.starts_with([' ', ':']))
                && get(var).is_some()
        })
        .map(|(_, var)| *var)
}
