//! Client authentication: `Authorization: Bearer <client key>` → SHA-256 → map lookup.
//!
//! Keys are configured only as digests. Looking up a digest (instead of comparing key strings)
//! means the time an attempt takes says nothing about how close a guess was: the attacker
//! controls the key, not the digest bits the map compares. The raw key never leaves `authenticate`.

pub mod budget;
pub mod flood;
mod layer;
pub mod ratelimit;

pub use layer::{AuthLayer, AuthService};

use http::HeaderMap;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Semaphore;

use crate::config::ClientConfig;
use ratelimit::Gcra;

/// The authenticated caller, placed in request extensions. Holds the id, never the key.
#[derive(Clone)]
pub struct Principal(pub Arc<ClientEntry>);

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Principal").field(&self.0.id).finish()
    }
}

pub struct ClientEntry {
    pub id: Arc<str>,
    /// Position in `[[clients]]`: the client's slot in the per-client metrics.
    pub index: usize,
    pub limiter: Option<Gcra>,
    pub concurrency: Option<Arc<Semaphore>>,
    /// `tpm` / `tokens_per_day`, kept in this process (the floor with a shared backend).
    pub budget: Option<budget::TokenBudget>,
    /// The same limits in the shared backend's units (empty: the client never reaches it).
    pub shared: crate::fleet::Spec,
    /// Model patterns this client may use; `None`: all.
    pub models: Option<Vec<String>>,
}

/// Digest → client. Built once at start-up.
pub struct ClientRegistry {
    by_digest: HashMap<[u8; 32], Arc<ClientEntry>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Unknown,
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing_key",
            Self::Malformed => "malformed_key",
            Self::Unknown => "unknown_key",
        }
    }
}

impl ClientRegistry {
    /// Build from validated config (digests are 64 hex chars); a client without its own
    /// `max_concurrent` gets `default_concurrency` (`limits.client_concurrency_default()`).
    pub fn new(clients: &[ClientConfig], default_concurrency: usize) -> Self {
        let by_digest = clients
            .iter()
            .enumerate()
            .filter_map(|(index, c)| {
                let mut d = [0u8; 32];
                hex::decode_to_slice(c.key_sha256.to_ascii_lowercase(), &mut d).ok()?;
                let limiter = c
                    .rpm
                    .map(|rpm| Gcra::per_minute(rpm, c.burst.unwrap_or(rpm)));
                let concurrency = Some(Arc::new(Semaphore::new(
                    c.max_concurrent.map_or(default_concurrency, |n| n as usize),
                )));
                let shared = crate::fleet::Spec {
                    requests: limiter
                        .as_ref()
                        .map(|g| (g.interval / 1000, g.tolerance / 1000)),
                    token_interval: c.tpm.map(|t| (60_000_000 / t.max(1)).max(1)),
                    tokens_per_day: c.tokens_per_day,
                };
                Some((
                    d,
                    Arc::new(ClientEntry {
                        id: Arc::from(c.id.as_str()),
                        index,
                        limiter,
                        concurrency,
                        budget: budget::TokenBudget::new(c.tpm, c.tokens_per_day),
                        shared,
                        models: c.models.clone(),
                    }),
                ))
            })
            .collect();
        Self { by_digest }
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Authenticate a request's headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthFailure> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthFailure::Missing)?;
        if values.next().is_some() {
            return Err(AuthFailure::Malformed);
        }
        let token = bearer_token(value.as_bytes()).ok_or(AuthFailure::Malformed)?;
        let digest: [u8; 32] = Sha256::digest(token).into();
        self.by_digest
            .get(&digest)
            .map(|e| Principal(e.clone()))
            .ok_or(AuthFailure::Unknown)
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive, one or more
/// spaces). The token must be non-empty visible ASCII without spaces, at most 512 bytes.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    if start == 0 {
        return None;
    }
    let token = &rest[start..];
    if token.is_empty() || token.len() > 512 || !token.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    Some(token)
}

/// A new random client key: `ngk_` + 48 hex characters (192 bits from the OS).
pub fn new_client_key() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 24];
    getrandom::getrandom(&mut b)?;
    Ok(format!("ngk_{}", hex::encode(b)))
}

/// Hex SHA-256 of a client key, as stored in `key_sha256`.
pub fn key_digest_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn registry() -> ClientRegistry {
        ClientRegistry::new(
            &[ClientConfig {
                id: "team-a".into(),
                key_sha256: key_digest_hex("ngk_secret"),
                rpm: None,
                burst: None,
                max_concurrent: None,
                tpm: None,
                tokens_per_day: None,
                models: None,
            }],
            1024,
        )
    }

    fn headers(v: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in v {
            h.append("authorization", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn new_keys_are_random_and_well_formed() {
        let (a, b) = (new_client_key().unwrap(), new_client_key().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 52);
        assert!(a.starts_with("ngk_") && a[4..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(bearer_token(format!("Bearer {a}").as_bytes()).is_some());
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer   abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer a b"), None);
        assert_eq!(
            bearer_token(&[b'B', b'e', b'a', b'r', b'e', b'r', b' ', 0xff]),
            None
        );
    }

    #[test]
    fn lookup_by_digest() {
        let r = registry();
        assert_eq!(
            &*r.authenticate(&headers(&["Bearer ngk_secret"]))
                .unwrap()
                .0
                .id,
            "team-a"
        );
        assert_eq!(
            r.authenticate(&headers(&[])).unwrap_err(),
            AuthFailure::Missing
        );
        assert_eq!(
            r.authenticate(&headers(&["Bearer ngk_secreT"]))
                .unwrap_err(),
            AuthFailure::Unknown
        );
        assert_eq!(
            r.authenticate(&headers(&["Bearer ngk_secret", "Bearer ngk_secret"]))
                .unwrap_err(),
            AuthFailure::Malformed
        );
    }
}
