//! `[[auth.jwt]]` issuers (JWT bearer tokens verified against a JWKS) and their validation.
//!
//! Only asymmetric algorithms are accepted: a shared-secret (`HS*`) or unsigned (`none`) token
//! proves nothing a gateway with only public keys could check, and listing one is a config error,
//! not something silently ignored.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use super::types::{dur, secs};

/// Algorithms a `[[auth.jwt]]` issuer may allow (all asymmetric; verified with `ring`).
pub const JWT_ALGORITHMS: [&str; 8] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// The exact `iss` claim of this issuer's tokens.
    pub issuer: String,
    /// Tokens must carry at least one of these in `aud`.
    pub audiences: Vec<String>,
    /// A JWKS document on disk (re-read when it changes or an unknown `kid` arrives).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (https only), fetched over verified TLS.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Extra CA bundle (PEM) trusted for `jwks_url`, besides the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow-list of `alg` values.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim that names the caller (matched against `[[clients]] jwt_subject`).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "secs::<30>", with = "dur")]
    pub leeway: Duration,
    /// How often the key set is refreshed in the background.
    #[serde(default = "secs::<300>", with = "dur")]
    pub jwks_refresh: Duration,
    /// How long the last good key set keeps serving while refreshes fail; after it, tokens of
    /// this issuer are refused until a refresh succeeds.
    #[serde(default = "secs::<3600>", with = "dur")]
    pub jwks_max_stale: Duration,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

fn default_subject_claim() -> String {
    "sub".into()
}

/// Problems with `auth.jwt`, as (field, message).
pub fn validate_jwt(issuers: &[JwtIssuerConfig], err: &mut impl FnMut(&str, String)) {
    let mut seen = std::collections::HashSet::new();
    for (i, j) in issuers.iter().enumerate() {
        let f = |k: &str| format!("auth.jwt[{i}].{k}");
        if j.issuer.is_empty() {
            err(&f("issuer"), "must not be empty".into());
        } else if !seen.insert(&j.issuer) {
            err(&f("issuer"), "same issuer as another [[auth.jwt]]".into());
        }
        if j.audiences.is_empty() || j.audiences.iter().any(String::is_empty) {
            err(
                &f("audiences"),
                "list at least one non-empty audience".into(),
            );
        }
        match (&j.jwks_file, &j.jwks_url) {
            (None, None) => err(&f("jwks_file"), "set jwks_file or jwks_url".into()),
            (Some(_), Some(_)) => err(&f("jwks_url"), "set jwks_file or jwks_url, not both".into()),
            (None, Some(u)) if !u.starts_with("https://") => {
                err(&f("jwks_url"), "must be an https:// URL".into());
            }
            (None, Some(u)) if u.parse::<http::Uri>().is_err() || u.contains('@') => {
                err(&f("jwks_url"), "not a valid URL without credentials".into());
            }
            _ => {}
        }
        if j.algorithms.is_empty() {
            err(&f("algorithms"), "list at least one algorithm".into());
        }
        for a in &j.algorithms {
            if a.eq_ignore_ascii_case("none") || a.to_ascii_uppercase().starts_with("HS") {
                err(
                    &f("algorithms"),
                    format!("{a:?} is never accepted (only asymmetric algorithms: RS*, PS*, ES*)"),
                );
            } else if !JWT_ALGORITHMS.contains(&a.as_str()) {
                err(
                    &f("algorithms"),
                    format!(
                        "unknown algorithm {a:?} (one of {})",
                        JWT_ALGORITHMS.join(", ")
                    ),
                );
            }
        }
        if j.subject_claim.is_empty() {
            err(&f("subject_claim"), "must not be empty".into());
        }
        if j.leeway > Duration::from_secs(300) {
            err(&f("leeway"), "at most 5m".into());
        }
        if j.jwks_refresh < Duration::from_secs(1) {
            err(&f("jwks_refresh"), "at least 1s".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    fn fields(jwt: &str, client: &str) -> Vec<String> {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:8000\"\n[secret]\nsource = \"file\"\npath = \"/k\"\n\
             [[clients]]\nid = \"a\"\n{client}\n[audit]\npath = \"-\"\n{jwt}"
        );
        parse(&text)
            .unwrap()
            .validate()
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    const ISSUER: &str =
        "[[auth.jwt]]\nissuer = \"https://k8s\"\naudiences = [\"nimgate\"]\njwks_file = \"/j\"\n";

    #[test]
    fn none_and_hs_algorithms_are_refused_naming_the_field() {
        for alg in ["none", "HS256", "hs512", "XS1"] {
            let errs = fields(
                &format!("{ISSUER}algorithms = [\"RS256\", \"{alg}\"]\n"),
                "jwt_subject = \"s\"",
            );
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].starts_with("auth.jwt[0].algorithms: "), "{errs:?}");
        }
        assert!(fields(ISSUER, "jwt_subject = \"s\"").is_empty());
    }

    #[test]
    fn issuer_and_client_mapping_checks() {
        let e = fields(
            "[[auth.jwt]]\nissuer = \"i\"\naudiences = []\njwks_url = \"http://x/jwks\"\n",
            "jwt_subject = \"s\"",
        );
        assert!(
            e.iter().any(|e| e.starts_with("auth.jwt[0].audiences")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.starts_with("auth.jwt[0].jwks_url")),
            "{e:?}"
        );
        let e = fields("", "jwt_subject = \"s\"");
        assert!(
            e[0].starts_with("clients[0].jwt_subject: needs an [[auth.jwt]]"),
            "{e:?}"
        );
        let e = fields(ISSUER, "");
        assert!(e[0].starts_with("clients[0].key_sha256: missing"), "{e:?}");
        let e = fields(ISSUER, "jwt_subject = \"s\"\njwt_issuer = \"other\"");
        assert!(e[0].starts_with("clients[0].jwt_issuer"), "{e:?}");
    }
}
