//! JWKS: one issuer's public keys (RSA, EC P-256/P-384), read from a file or an https URL.
//!
//! The last good set keeps serving while refreshes fail, for at most `jwks_max_stale` past its
//! refresh interval; then the issuer's tokens are refused (`jwks_unavailable`) until a fetch
//! succeeds. A token with an unknown `kid` may trigger a refetch, at most one per
//! `REFETCH_EVERY` per issuer, so a stream of made-up `kid`s cannot hammer the IdP. The URL is
//! fetched with reqwest (already in the tree for Vault) over verified rustls, `ca_file` added to
//! the system roots, no redirects, no proxy from the environment.

use arc_swap::ArcSwapOption;
use base64::Engine;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::JwtIssuerConfig;

/// Least time between two refetches an unknown `kid` triggers.
pub const REFETCH_EVERY: Duration = Duration::from_secs(10);
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An uncompressed point (0x04 ‖ x ‖ y) on P-256 (`p384 == false`) or P-384.
    Ec { p384: bool, point: Vec<u8> },
}

#[derive(Debug, Clone)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The key's own `alg`, when the JWKS names one: a token must then use exactly it.
    pub alg: Option<String>,
    pub key: PublicKey,
}

pub struct KeySet {
    pub keys: Vec<Jwk>,
    fetched: Instant,
}

impl KeySet {
    /// A set fetched now (for tests of the verifier).
    pub fn new(keys: Vec<Jwk>) -> Self {
        Self {
            keys,
            fetched: Instant::now(),
        }
    }
}

fn b64(v: &serde_json::Value) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v.as_str()?)
        .ok()
}

/// The signature keys of a JWKS document; keys of other uses or types are skipped. An error if
/// none is left.
pub fn parse(text: &[u8]) -> Result<Vec<Jwk>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(text).map_err(|_| "not a JSON JWKS document".to_string())?;
    let list = doc["keys"]
        .as_array()
        .ok_or("no \"keys\" array in the JWKS document")?;
    let keys: Vec<Jwk> = list
        .iter()
        .filter(|k| k["use"].as_str().is_none_or(|u| u == "sig"))
        .filter_map(|k| {
            let key = match (k["kty"].as_str()?, k["crv"].as_str()) {
                ("RSA", _) => PublicKey::Rsa {
                    n: b64(&k["n"])?,
                    e: b64(&k["e"])?,
                },
                ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                    let (x, y) = (b64(&k["x"])?, b64(&k["y"])?);
                    let len = if crv == "P-256" { 32 } else { 48 };
                    if x.len() != len || y.len() != len {
                        return None;
                    }
                    let mut point = vec![4u8];
                    point.extend(x);
                    point.extend(y);
                    PublicKey::Ec {
                        p384: crv == "P-384",
                        point,
                    }
                }
                _ => return None,
            };
            Some(Jwk {
                kid: k["kid"].as_str().map(str::to_string),
                alg: k["alg"].as_str().map(str::to_string),
                key,
            })
        })
        .collect();
    if keys.is_empty() {
        return Err("the JWKS document has no usable signature key (RSA, EC P-256/P-384)".into());
    }
    Ok(keys)
}

enum Source {
    File(PathBuf),
    Url(String, reqwest::Client),
}

/// One issuer's key set and where it comes from.
pub struct Jwks {
    source: Source,
    set: ArcSwapOption<KeySet>,
    /// Refresh interval + `jwks_max_stale`: a set older than this is not used.
    max_age: Duration,
    pub refresh: Duration,
    /// Last refetch for a missing set (`[0]`) and for an unknown `kid` (`[1]`).
    last_refetch: Mutex<[Option<Instant>; 2]>,
}

impl Jwks {
    /// From config; a `jwks_file` is read now (a broken one is a start-up error), a URL is
    /// fetched by the first refresh.
    pub fn new(cfg: &JwtIssuerConfig, field: &str) -> Result<Self, String> {
        let source = match (&cfg.jwks_file, &cfg.jwks_url) {
            (Some(p), _) => Source::File(p.clone()),
            (None, Some(u)) => Source::Url(u.clone(), http_client(cfg, field)?),
            (None, None) => return Err(format!("{field}.jwks_file: not set")),
        };
        let jwks = Self {
            source,
            set: ArcSwapOption::empty(),
            max_age: cfg.jwks_refresh + cfg.jwks_max_stale,
            refresh: cfg.jwks_refresh,
            last_refetch: Mutex::new([None; 2]),
        };
        if let Source::File(p) = &jwks.source {
            let text = std::fs::read(p)
                .map_err(|e| format!("{field}.jwks_file {}: {}", p.display(), e.kind()))?;
            let keys = parse(&text).map_err(|e| format!("{field}.jwks_file: {e}"))?;
            jwks.store(keys);
        }
        Ok(jwks)
    }

    fn store(&self, keys: Vec<Jwk>) {
        self.set.store(Some(Arc::new(KeySet::new(keys))));
    }

    /// The current set, unless it is older than the refresh interval plus `jwks_max_stale`.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.set
            .load_full()
            .filter(|s| s.fetched.elapsed() <= self.max_age)
    }

    /// Fetch and parse the set, and store it if it is good; a failure keeps the old set.
    pub async fn fetch(&self) -> Result<(), String> {
        let text = match &self.source {
            // A small local file: read inline, as `secret/file.rs` reads the key file.
            Source::File(p) => {
                std::fs::read(p).map_err(|e| format!("{}: {}", p.display(), e.kind()))?
            }
            Source::Url(u, http) => {
                let resp = http.get(u).send().await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("HTTP {}", resp.status().as_u16()));
                }
                let body = resp.bytes().await.map_err(|e| e.to_string())?;
                body.to_vec()
            }
        };
        if text.len() > MAX_JWKS_BYTES {
            return Err("JWKS document too large".into());
        }
        self.store(parse(&text)?);
        Ok(())
    }

    /// Refetch for an unknown `kid` (or a missing set), unless one ran within `REFETCH_EVERY`.
    /// The two causes are limited apart, so the first fetch at start-up does not hold back the
    /// refetch a key rotation needs. True if a fetch succeeded.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let slot = usize::from(self.current().is_some());
        {
            let Ok(mut last) = self.last_refetch.lock() else {
                return false;
            };
            if last[slot].is_some_and(|t| t.elapsed() < REFETCH_EVERY) {
                return false;
            }
            last[slot] = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refetch failed; the last good key set stays");
                false
            }
        }
    }

    /// Refresh every `refresh` until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        issuer: String,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if let Err(e) = self.fetch().await {
                tracing::warn!(%issuer, error = %e, "JWKS refresh failed; the last good key set stays");
            }
            tokio::select! {
                () = tokio::time::sleep(self.refresh) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

fn http_client(cfg: &JwtIssuerConfig, field: &str) -> Result<reqwest::Client, String> {
    let mut b = reqwest::ClientBuilder::new()
        .tls_backend_rustls()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(10));
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("{field}.ca_file {}: {}", path.display(), e.kind()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
            format!(
                "{field}.ca_file {}: not a PEM certificate bundle",
                path.display()
            )
        })?;
        b = b.tls_certs_merge(certs);
    }
    b.build()
        .map_err(|e| format!("{field}.jwks_url: cannot build the HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rsa_and_ec_keys_and_skips_the_rest() {
        let doc = br#"{"keys":[
            {"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB","alg":"RS256"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"oct","k":"c2VjcmV0"},
            {"kty":"EC","kid":"e","crv":"P-256",
             "x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}
        ]}"#;
        let keys = parse(doc).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].kid.as_deref(), Some("r"));
        assert_eq!(keys[0].alg.as_deref(), Some("RS256"));
        assert!(matches!(&keys[1].key, PublicKey::Ec { p384: false, point } if point.len() == 65));
        assert!(parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(parse(b"not json").is_err());
    }
}
