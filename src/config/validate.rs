//! `Config::validate()`: every problem found, each naming the field it is about.

use super::types::{Config, SecretConfig, VaultAuthConfig};
use std::collections::HashSet;
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
fn has_userinfo(u: &http::Uri) -> bool {
    u.authority().is_some_and(|a| a.as_str().contains('@'))
}

impl Config {
    /// Every problem in the whole config, section by section.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let mut err = |f: &str, m: String| errs.push(ConfigError::new(f, m));
        self.validate_server(&mut err);
        self.validate_upstream(&mut err);
        self.validate_secret(&mut err);
        self.validate_clients(&mut err);
        super::auth::validate_jwt(&self.auth.jwt, &mut err);
        self.validate_audit(&mut err);
        self.validate_limits(&mut err);
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
        if self.server.route_prefixes.is_empty() {
            err(
                "server.route_prefixes",
                "must list at least one prefix".into(),
            );
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
    fn validate_upstream(&self, err: &mut impl FnMut(&str, String)) {
        match self.upstream.url.parse::<http::Uri>() {
            Ok(u) => {
                if !matches!(u.scheme_str(), Some("http" | "https")) {
                    err("upstream.url", "scheme must be http or https".into());
                }
                if u.host().is_none() {
                    err("upstream.url", "must include a host".into());
                }
                if has_userinfo(&u) {
                    err(
                        "upstream.url",
                        "must not contain user:password@ (credentials come from [secret])".into(),
                    );
                }
                if !matches!(u.path(), "" | "/") || u.query().is_some() {
                    err(
                        "upstream.url",
                        "must be scheme://host[:port] with no path or query".into(),
                    );
                }
            }
            Err(e) => err("upstream.url", format!("not a valid URL: {e}")),
        }
        match http::HeaderName::from_bytes(self.upstream.auth_header.as_bytes()) {
            Ok(h) if FORBIDDEN_AUTH_HEADERS.contains(&h.as_str()) => {
                err("upstream.auth_header", format!("{h} cannot carry the key"));
            }
            Ok(_) => {}
            Err(_) => err("upstream.auth_header", "not a valid header name".into()),
        }
        if self.upstream.auth_value.matches("{key}").count() != 1 {
            err(
                "upstream.auth_value",
                "must contain the placeholder {key} exactly once".into(),
            );
        } else if http::HeaderValue::from_str(&self.upstream.auth_value.replace("{key}", "k"))
            .is_err()
        {
            err("upstream.auth_value", "must be a valid header value".into());
        }
        if self.upstream.connect_timeout.is_zero() {
            err("upstream.connect_timeout", "must be greater than 0".into());
        }
        if self.upstream.response_timeout.is_zero() {
            err("upstream.response_timeout", "must be greater than 0".into());
        }
    }

    /// `[[clients]]` (including those from `auth.clients_file`).
    fn validate_clients(&self, err: &mut impl FnMut(&str, String)) {
        if self.clients.is_empty() {
            err(
                "clients",
                "no client keys configured; add [[clients]] (see `nimgate keys new`)".into(),
            );
        }
        let mut ids = HashSet::new();
        let mut digests = HashSet::new();
        let mut subjects = HashSet::new();
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
                    && c.cert_san_uri.is_none()
                    && c.cert_san_dns.is_none() =>
                {
                    err(
                        &f("key_sha256"),
                        "missing: a client needs key_sha256, jwt_subject or cert_san_uri/cert_san_dns"
                            .into(),
                    );
                }
                None => {}
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
                err(
                    &f("jwt_issuer"),
                    "not the issuer of any [[auth.jwt]]".into(),
                );
            }
        }
        for (k, v) in [
            ("cert_san_uri", &c.cert_san_uri),
            ("cert_san_dns", &c.cert_san_dns),
        ] {
            if v.is_some() && self.server.client_ca.is_none() {
                err(&f(k), "needs [server] client_ca".into());
            }
        }
        let Some(sub) = &c.jwt_subject else { return };
        if sub.is_empty() {
            err(&f("jwt_subject"), "must not be empty".into());
        } else if self.auth.jwt.is_empty() {
            err(&f("jwt_subject"), "needs an [[auth.jwt]] issuer".into());
        } else if !subjects.insert((c.jwt_issuer.as_deref(), sub.as_str())) {
            err(&f("jwt_subject"), "same subject as another client".into());
        }
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
        if a.max_wait.is_zero() {
            err("audit.max_wait", "must be greater than 0".into());
        }
        if a.max_bytes > 0 && a.keep == 0 {
            err(
                "audit.keep",
                "must be at least 1 when max_bytes is set".into(),
            );
        }
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
        if l.idle_timeout.is_zero() {
            err("limits.idle_timeout", "must be greater than 0".into());
        }
        if l.header_read_timeout.is_zero() {
            err(
                "limits.header_read_timeout",
                "must be greater than 0".into(),
            );
        }
    }

    fn validate_secret(&self, err: &mut impl FnMut(&str, String)) {
        match &self.secret {
            SecretConfig::File(f) => {
                if f.path.as_os_str().is_empty() {
                    err("secret.path", "must be set".into());
                }
                if let Some(p) = &f.json_pointer {
                    if !p.starts_with('/') {
                        err(
                            "secret.json_pointer",
                            "must start with '/' (RFC 6901)".into(),
                        );
                    }
                }
                if f.poll_interval.is_zero() {
                    err("secret.poll_interval", "must be greater than 0".into());
                }
            }
            SecretConfig::Vault(v) => {
                match v.address.parse::<http::Uri>() {
                    Ok(u) if has_userinfo(&u) => err(
                        "secret.address",
                        "must not contain user:password@ (Vault credentials come from files)"
                            .into(),
                    ),
                    Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) => {}
                    _ => err(
                        "secret.address",
                        "must be an http:// or https:// URL".into(),
                    ),
                }
                if v.mount.trim_matches('/').is_empty() {
                    err("secret.mount", "must be set".into());
                }
                if v.path.trim_matches('/').is_empty() {
                    err("secret.path", "must be set".into());
                }
                if !matches!(v.kv_version, 1 | 2) {
                    err("secret.kv_version", "must be 1 or 2".into());
                }
                if v.version.is_some() && v.kv_version != 2 {
                    err("secret.version", "only KV v2 has versions".into());
                }
                if v.field.is_empty() {
                    err("secret.field", "must be set".into());
                }
                if v.refresh.is_zero() {
                    err("secret.refresh", "must be greater than 0".into());
                }
                if v.max_staleness < v.refresh {
                    err(
                        "secret.max_staleness",
                        "must be at least secret.refresh".into(),
                    );
                }
                if v.timeout.is_zero() {
                    err("secret.timeout", "must be greater than 0".into());
                }
                match &v.auth {
                    VaultAuthConfig::Kubernetes(k) if k.role.is_empty() => {
                        err("secret.auth.role", "must be set".into());
                    }
                    VaultAuthConfig::Jwt(j) => {
                        if j.role.is_empty() {
                            err("secret.auth.role", "must be set".into());
                        }
                        if j.jwt_file.as_os_str().is_empty() {
                            err("secret.auth.jwt_file", "must be set".into());
                        }
                        if j.mount.trim_matches('/').is_empty() {
                            err("secret.auth.mount", "must not be empty".into());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
