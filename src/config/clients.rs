//! `Config::validate_clients()`: the `[[clients]]` entries (and those of `auth.clients_file`),
//! each problem naming `clients[N].field`; `check_clients_file`, the same rules for a clients
//! file `nimgate keys` is about to put in place.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::types::{ClientConfig, Config};
use super::ConfigError;

/// Messages about a client setting whose other half lives in another section of the main
/// config; `nimgate keys` without `--config` cannot judge them (`check_clients_file`).
const NEEDS_CLIENT_CA: &str = "needs [server] client_ca";
const NEEDS_JWT: &str = "needs an [[auth.jwt]] issuer";
const NOT_AN_ISSUER: &str = "not the issuer of any [[auth.jwt]]";
const NO_CLIENTS: &str = "no client keys configured; add [[clients]] (see `nimgate keys add`)";

/// The certificate names a client can be mapped by: each value may name one client only.
const CERT_FIELDS: [&str; 3] = ["cert_san_uri", "cert_san_dns", "cert_subject_cn"];

fn cert_names(c: &ClientConfig) -> [(&'static str, Option<&String>); 3] {
    [
        (CERT_FIELDS[0], c.cert_san_uri.as_ref()),
        (CERT_FIELDS[1], c.cert_san_dns.as_ref()),
        (CERT_FIELDS[2], c.cert_subject_cn.as_ref()),
    ]
}

/// What `nimgate keys` checks before it puts a clients file in place: `path` read and parsed
/// exactly as the gateway merges `auth.clients_file` (`Config::resolve_files`), then validated.
/// With `main` (the gateway's config as parsed, its own `auth.clients_file` replaced by `path`):
/// every problem of the whole config, as `check` would report it. Without: the file's own rules
/// only; a setting whose other half lives in the main config (`cert_*` needs `client_ca`,
/// `jwt_subject` needs `[[auth.jwt]]`), and a file with no client, are not judged.
pub fn check_clients_file(path: &Path, main: Option<&Config>) -> Vec<ConfigError> {
    let mut cfg = match main {
        Some(c) => c.clone(),
        None => match super::parse("") {
            Ok(c) => c,
            Err(e) => return e,
        },
    };
    cfg.auth.clients_file = Some(path.to_path_buf());
    if let Err(e) = cfg.resolve_files() {
        return e;
    }
    if main.is_some() {
        return cfg.validate();
    }
    let mut errs = Vec::new();
    cfg.validate_clients(&mut |f: &str, m: String| errs.push(ConfigError::new(f, m)));
    errs.retain(|e| {
        ![NEEDS_CLIENT_CA, NEEDS_JWT, NOT_AN_ISSUER, NO_CLIENTS].contains(&e.message.as_str())
    });
    errs
}

impl Config {
    /// `[[clients]]` (including those from `auth.clients_file`).
    pub(super) fn validate_clients(&self, err: &mut impl FnMut(&str, String)) {
        if self.clients.is_empty() {
            err("clients", NO_CLIENTS.into());
        }
        let mut ids = HashSet::new();
        let mut digests = HashSet::new();
        let mut subjects = HashSet::new();
        // (field, value as matched) → the first client that has it.
        let mut cert_seen: HashMap<(&str, String), usize> = HashMap::new();
        for (i, c) in self.clients.iter().enumerate() {
            let f = |k: &str| format!("clients[{i}].{k}");
            if c.id.is_empty() || c.id.len() > 128 || c.id.chars().any(char::is_control) {
                err(&f("id"), "must be 1–128 printable characters".into());
            }
            if !ids.insert(&c.id) {
                err(&f("id"), format!("duplicate client id {:?}", c.id));
            }
            match &c.key_sha256 {
                Some(d) => {
                    let d = d.to_ascii_lowercase();
                    if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                        err(
                            &f("key_sha256"),
                            "must be 64 hex characters (a SHA-256 digest)".into(),
                        );
                    } else if !digests.insert(d) {
                        err(&f("key_sha256"), "same digest as another client".into());
                    }
                }
                None if c.jwt_subject.is_none()
                    && cert_names(c).iter().all(|(_, v)| v.is_none()) =>
                {
                    err(
                        &f("key_sha256"),
                        "missing: a client needs key_sha256, jwt_subject or cert_san_uri/cert_san_dns/cert_subject_cn"
                            .into(),
                    );
                }
                None => {}
            }
            for (k, v) in cert_names(c) {
                let Some(v) = v else { continue };
                if v.is_empty() {
                    err(&f(k), "must not be empty".into());
                    continue;
                }
                // DNS names match case-insensitively (as the registry looks them up).
                let key = if k == "cert_san_dns" {
                    v.to_ascii_lowercase()
                } else {
                    v.clone()
                };
                if let Some(first) = cert_seen.get(&(k, key.clone())) {
                    err(
                        &f(k),
                        format!("same value as clients[{first}].{k}: a certificate must map to one client"),
                    );
                } else {
                    cert_seen.insert((k, key), i);
                }
            }
            self.validate_jwt_client(c, &f, &mut subjects, err);
            if let Err(m) = c.expires_at() {
                err(&f("expires"), m);
            }
            if c.rpm == Some(0) {
                err(
                    &f("rpm"),
                    "must be at least 1 (omit it for no limit)".into(),
                );
            }
            if c.burst == Some(0) {
                err(&f("burst"), "must be at least 1".into());
            }
            if c.max_concurrent == Some(0) {
                err(&f("max_concurrent"), "must be at least 1".into());
            }
            for (name, v) in [("tpm", c.tpm), ("tokens_per_day", c.tokens_per_day)] {
                if v == Some(0) {
                    err(
                        &f(name),
                        "must be at least 1 (omit it for no budget)".into(),
                    );
                }
            }
            for m in c.models.iter().flatten() {
                if let Err(why) = super::upstreams::check_pattern(m) {
                    err(&f("models"), format!("{m:?}: {why}"));
                }
            }
        }
    }

    /// A client's `jwt_subject` / `jwt_issuer`: unique per issuer, and only with `[[auth.jwt]]`.
    fn validate_jwt_client<'a>(
        &self,
        c: &'a super::types::ClientConfig,
        f: &impl Fn(&str) -> String,
        subjects: &mut HashSet<(Option<&'a str>, &'a str)>,
        err: &mut impl FnMut(&str, String),
    ) {
        if let Some(iss) = &c.jwt_issuer {
            if c.jwt_subject.is_none() {
                err(&f("jwt_issuer"), "only with jwt_subject".into());
            } else if !self.auth.jwt.iter().any(|j| &j.issuer == iss) {
                err(&f("jwt_issuer"), NOT_AN_ISSUER.into());
            }
        }
        for (k, v) in cert_names(c) {
            if v.is_some() && self.server.client_ca.is_none() {
                err(&f(k), NEEDS_CLIENT_CA.into());
            }
        }
        let Some(sub) = &c.jwt_subject else { return };
        if sub.is_empty() {
            err(&f("jwt_subject"), "must not be empty".into());
        } else if self.auth.jwt.is_empty() {
            err(&f("jwt_subject"), NEEDS_JWT.into());
        } else if !subjects.insert((c.jwt_issuer.as_deref(), sub.as_str())) {
            err(&f("jwt_subject"), "same subject as another client".into());
        }
    }
}
