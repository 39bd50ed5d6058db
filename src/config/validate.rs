//! `Config::validate()`: every problem found, each naming the field it is about.

use super::types::{Config, SecretConfig, UpstreamConfig, VaultAuthConfig};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Headers that may never carry the injected key (they are stripped or mean something else).
const FORBIDDEN_AUTH_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "proxy-authorization",
];

/// `scheme://user:pass@host`: a credential in a URL would land in logs, `check` output and
/// audit records; every URL setting refuses it (the message never repeats the URL).
pub(super) fn has_userinfo(u: &http::Uri) -> bool {
    u.authority().is_some_and(|a| a.as_str().contains('@'))
}

impl Config {
    /// Every problem in the whole config, section by section.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let mut err = |f: &str, m: String| errs.push(ConfigError::new(f, m));
        self.validate_server(&mut err);
        self.validate_routing(&mut err);
        for u in self.upstream_list() {
            Self::validate_upstream(u.cfg, &u.field, &mut err);
            if let Some(s) = u.secret {
                Self::validate_secret(s, &u.secret_field, &mut err);
            }
        }
        self.validate_clients(&mut err);
        super::auth::validate_jwt(&self.auth.jwt, &mut err);
        self.validate_audit(&mut err);
        self.validate_limits(&mut err);
        self.ratelimit.validate(&mut err);
        self.validate_durations(&mut err);
        for (field, m) in self.telemetry.problems() {
            err(field, m);
        }
        errs
    }

    /// `[server]` and `[admin]`.
    fn validate_server(&self, err: &mut impl FnMut(&str, String)) {
        if self.server.listen == self.admin.listen && self.server.listen.port() != 0 {
            err("admin.listen", "must differ from server.listen".to_string());
        }
        if self.server.client_ca.is_some() && self.server.tls_cert.is_none() {
            err(
                "server.client_ca",
                "needs tls_cert and tls_key (client certificates are a TLS feature)".into(),
            );
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            err(
                "server.tls_cert",
                "tls_cert and tls_key must be set together".to_string(),
            );
        }
        if let Err(e) = crate::telemetry::log_filter(&self.server.log_level) {
            err("server.log_level", e);
        }
        if self.server.route_prefixes.is_empty() {
            err(
                "server.route_prefixes",
                "must list at least one prefix".into(),
            );
        }
        for p in &self.server.trusted_proxies {
            if let Err(m) = crate::server::xff::parse_entry(p) {
                err("server.trusted_proxies", m);
            }
        }
        for p in &self.server.route_prefixes {
            if !p.starts_with('/') || !p.ends_with('/') || p.contains("..") {
                err(
                    "server.route_prefixes",
                    format!("{p:?} must start and end with '/' and not contain '..'"),
                );
            }
        }
    }

    /// `[upstream]`: URL, key header and template, timeouts.
    fn validate_upstream(u: &UpstreamConfig, p: &str, err: &mut impl FnMut(&str, String)) {
        for (f, url) in u.replica_urls(p) {
            match url.parse::<http::Uri>() {
                Ok(uri) => {
                    if !matches!(uri.scheme_str(), Some("http" | "https")) {
                        err(
                            &f,
                            format!("scheme must be http or https{}", super::hints::url(url)),
                        );
                    }
                    if uri.host().is_none() {
                        err(&f, "must include a host".into());
                    }
                    if has_userinfo(&uri) {
                        err(
                            &f,
                            "must not contain user:password@ (credentials come from [secret])"
                                .into(),
                        );
                    }
                    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                        err(
                            &f,
                            "must be scheme://host[:port] with no path or query".into(),
                        );
                    }
                }
                Err(e) => err(&f, format!("not a valid URL: {e}")),
            }
        }
        match http::HeaderName::from_bytes(u.auth_header.as_bytes()) {
            Ok(h) if FORBIDDEN_AUTH_HEADERS.contains(&h.as_str()) => {
                err(
                    &format!("{p}.auth_header"),
                    format!("{h} cannot carry the key"),
                );
            }
            Ok(_) => {}
            Err(_) => err(
                &format!("{p}.auth_header"),
                "not a valid header name".into(),
            ),
        }
        if u.auth_value.matches("{key}").count() != 1 {
            err(
                &format!("{p}.auth_value"),
                "must contain the placeholder {key} exactly once".into(),
            );
        } else if http::HeaderValue::from_str(&u.auth_value.replace("{key}", "k")).is_err() {
            err(
                &format!("{p}.auth_value"),
                "must be a valid header value".into(),
            );
        }
        u.validate_tls(p, err);
        // `upstream.*` durations are bounded in `bounds`; a `[[upstreams]]` entry's here.
    }

    /// `[audit]`.
    fn validate_audit(&self, err: &mut impl FnMut(&str, String)) {
        let a = &self.audit;
        if a.path.is_empty() {
            err(
                "audit.path",
                "must be a file path or \"-\" for stdout".into(),
            );
        }
        if a.queue == 0 {
            err("audit.queue", "must be at least 1".into());
        }
        if a.max_bytes > 0 && a.keep == 0 {
            err(
                "audit.keep",
                "must be at least 1 when max_bytes is set".into(),
            );
        }
        self.validate_anchor(err);
    }

    /// `[limits]`.
    fn validate_limits(&self, err: &mut impl FnMut(&str, String)) {
        let l = &self.limits;
        if l.max_header_bytes < 1024 {
            err("limits.max_header_bytes", "must be at least 1024".into());
        }
        if l.max_headers == 0 {
            err("limits.max_headers", "must be at least 1".into());
        }
        if l.max_concurrent_requests == 0 {
            err(
                "limits.max_concurrent_requests",
                "must be at least 1".into(),
            );
        }
        match l.client_max_concurrent {
            Some(0) => err("limits.client_max_concurrent", "must be at least 1".into()),
            Some(n) if n > l.max_concurrent_requests => err(
                "limits.client_max_concurrent",
                format!(
                    "{n} is more than limits.max_concurrent_requests ({}): one client could take \
                     every slot",
                    l.max_concurrent_requests
                ),
            ),
            _ => {}
        }
        if l.max_connections == 0 {
            err("limits.max_connections", "must be at least 1".into());
        }
        if l.max_h2_streams == 0 {
            err("limits.max_h2_streams", "must be at least 1".into());
        }
    }

    fn validate_secret(secret: &SecretConfig, p: &str, err: &mut impl FnMut(&str, String)) {
        match secret {
            SecretConfig::File(f) => {
                if f.path.as_os_str().is_empty() {
                    err(&format!("{p}.path"), "must be set".into());
                }
                if let Some(p) = &f.json_pointer {
                    if !p.starts_with('/') {
                        err(
                            &format!("{p}.json_pointer"),
                            "must start with '/' (RFC 6901)".into(),
                        );
                    }
                }
            }
            SecretConfig::Vault(v) => {
                match v.address.parse::<http::Uri>() {
                    Ok(u) if has_userinfo(&u) => err(
                        &format!("{p}.address"),
                        "must not contain user:password@ (Vault credentials come from files)"
                            .into(),
                    ),
                    Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) => {}
                    _ => err(
                        &format!("{p}.address"),
                        format!(
                            "must be an http:// or https:// URL{}",
                            super::hints::url(&v.address)
                        ),
                    ),
                }
                if v.mount.trim_matches('/').is_empty() {
                    err(&format!("{p}.mount"), "must be set".into());
                }
                if v.path.trim_matches('/').is_empty() {
                    err(&format!("{p}.path"), "must be set".into());
                }
                if !matches!(v.kv_version, 1 | 2) {
                    err(&format!("{p}.kv_version"), "must be 1 or 2".into());
                }
                if v.version.is_some() && v.kv_version != 2 {
                    err(&format!("{p}.version"), "only KV v2 has versions".into());
                }
                if v.field.is_empty() {
                    err(&format!("{p}.field"), "must be set".into());
                }
                if v.max_staleness < v.refresh {
                    err(
                        &format!("{p}.max_staleness"),
                        "must be at least secret.refresh".into(),
                    );
                }
                match &v.auth {
                    VaultAuthConfig::Kubernetes(k) if k.role.is_empty() => {
                        err(&format!("{p}.auth.role"), "must be set".into());
                    }
                    VaultAuthConfig::Jwt(j) => {
                        if j.role.is_empty() {
                            err(&format!("{p}.auth.role"), "must be set".into());
                        }
                        if j.jwt_file.as_os_str().is_empty() {
                            err(&format!("{p}.auth.jwt_file"), "must be set".into());
                        }
                        if j.mount.trim_matches('/').is_empty() {
                            err(&format!("{p}.auth.mount"), "must not be empty".into());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
