//! The `[ratelimit]` schema: where per-client limits and token budgets are kept. `local` (the
//! default) keeps them in this process; `redis` shares them across a fleet of gateways.
//! Holds an address and file paths, never a password.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use super::types::{dur, millis};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Local,
    Redis,
}

/// What a limited request gets while the shared backend cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Served, with this replica's own limiter as the floor.
    #[default]
    Open,
    /// Refused with 503 `rate_limit_unavailable`.
    Closed,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub backend: Backend,
    /// `redis://host:port/db` or `rediss://…` (TLS). No `user:password@`: the password comes
    /// from `redis_password_file`.
    pub redis_url: Option<String>,
    pub redis_password_file: Option<PathBuf>,
    /// Extra CA bundle for `rediss://`.
    pub ca_file: Option<PathBuf>,
    pub failure_mode: FailureMode,
    /// Longest a request waits for the backend (connect included) before `failure_mode`.
    #[serde(with = "dur")]
    pub timeout: Duration,
    /// Prefix of every key nimgate writes (`<prefix>:{<client id>}:…`).
    pub key_prefix: String,
    /// For a streamed request without `stream_options.include_usage` from a client with a token
    /// budget, ask the NIM for usage and remove that extra chunk from what the client receives.
    pub stream_usage: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Local,
            redis_url: None,
            redis_password_file: None,
            ca_file: None,
            failure_mode: FailureMode::Open,
            timeout: millis::<10>(),
            key_prefix: "nimgate".into(),
            stream_usage: true,
        }
    }
}

impl FailureMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

impl RateLimitConfig {
    /// `[ratelimit]`: every problem, naming its field.
    pub(super) fn validate(&self, err: &mut impl FnMut(&str, String)) {
        if self.backend == Backend::Redis {
            match &self.redis_url {
                None => err(
                    "ratelimit.redis_url",
                    "required with backend = \"redis\"".into(),
                ),
                Some(u) => {
                    if let Err(e) = crate::fleet::parse_url(u) {
                        err(
                            "ratelimit.redis_url",
                            e.trim_start_matches("ratelimit.redis_url: ").into(),
                        );
                    }
                }
            }
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(5) {
            err(
                "ratelimit.timeout",
                "must be between 1ms and 5s (a request waits this long for the backend)".into(),
            );
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}', ' ']) {
            err(
                "ratelimit.key_prefix",
                "must be non-empty, without braces or spaces".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, ConfigError};

    fn base() -> String {
        let d = "0".repeat(63) + "1";
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:8000\"\n[secret]\nsource = \"file\"\npath = \"/k\"\n\
             [[clients]]\nid = \"a\"\nkey_sha256 = \"{d}\"\n[audit]\npath = \"/a\"\n"
        )
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        match parse(text) {
            Ok(c) => c.validate(),
            Err(e) => e,
        }
    }

    #[test]
    fn client_concurrency_defaults_to_a_quarter_of_the_global_limit_and_is_bounded_by_it() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.limits.client_concurrency_default(), 1024);
        let c = parse(&format!(
            "{}\n[limits]\nmax_concurrent_requests = 2\n",
            base()
        ))
        .unwrap();
        assert_eq!(c.limits.client_concurrency_default(), 1);
        let errs = errors(&format!(
            "{}\n[limits]\nmax_concurrent_requests = 8\nclient_max_concurrent = 9\n",
            base()
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "limits.client_max_concurrent");
        let errs = errors(&format!(
            "{}\n[limits]\nclient_max_concurrent = 0\n",
            base()
        ));
        assert_eq!(errs[0].field, "limits.client_max_concurrent", "{errs:?}");
    }

    #[test]
    fn ratelimit_settings_are_validated_naming_the_field() {
        let e = errors(&format!("{}[ratelimit]\nbackend = \"redis\"\n", base()));
        assert_eq!(e[0].field, "ratelimit.redis_url", "{e:?}");
        let e = errors(&format!(
            "{}[ratelimit]\nbackend = \"redis\"\nredis_url = \"redis://u:pw@h/0\"\n",
            base()
        ));
        assert_eq!(e[0].field, "ratelimit.redis_url");
        assert!(!e[0].message.contains("pw@"), "{e:?}");
        let e = errors(&format!("{}[ratelimit]\ntimeout = \"0s\"\n", base()));
        assert!(e.iter().any(|e| e.field == "ratelimit.timeout"), "{e:?}");
        let e = errors(&base().replace("[audit]", "tpm = 0\n[audit]"));
        assert!(
            e.iter()
                .any(|e| e.field.contains("].tpm") || e.field.contains(".tpm ")),
            "{e:?}"
        );
        assert!(errors(&format!(
            "{}[ratelimit]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\n",
            base()
        ))
        .is_empty());
    }
}
