//! Client authentication: `Authorization: Bearer <client key>` → SHA-256 → map lookup, or a
//! bearer JWT (three base64url segments, only when `[[auth.jwt]]` is set) → `tokens.rs`.
//!
//! Keys are configured only as digests. Looking up a digest (instead of comparing key strings)
//! means the time an attempt takes says nothing about how close a guess was: the attacker
//! controls the key, not the digest bits the map compares. The raw key never leaves `authenticate`.

mod bearer;
pub mod budget;
pub mod flood;
pub mod jwks;
pub mod jwt;
mod layer;
pub mod mtls;
pub mod ratelimit;
pub mod tokens;

use bearer::MAX_KEY_BYTES;
pub use bearer::{bearer_token, bearer_token_max, key_digest_hex, new_client_key};
pub use layer::{AuthLayer, AuthService};

use http::HeaderMap;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Semaphore;

use crate::config::{ClientConfig, JwtIssuerConfig};
use crate::names::{API_KEY, X_API_KEY};
use jwt::{looks_like_jwt, JwtFailure, MAX_JWT_BYTES};
use mtls::PeerIdentity;
use ratelimit::Gcra;
use tokens::{JwtAuth, Outcome};

/// The authenticated caller, placed in request extensions: the client, and how it proved who it
/// is. Holds the id and subject, never the key or token.
#[derive(Clone)]
pub struct Principal(pub Arc<ClientEntry>, pub Via);

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Principal").field(&self.0.id).finish()
    }
}

/// How a request authenticated (`auth` in audit records) and, for a JWT or certificate, the
/// subject it named (`subject`).
#[derive(Clone, Debug)]
pub struct Via {
    pub method: AuthMethod,
    pub subject: Option<Arc<str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    Key,
    Jwt,
    Mtls,
}

impl AuthMethod {
    pub fn name(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Jwt => "jwt",
            Self::Mtls => "mtls",
        }
    }
}

const VIA_KEY: Via = Via {
    method: AuthMethod::Key,
    subject: None,
};

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
    /// The key's `expires`: from then on it gets 401 `key_expired`.
    pub expires: Option<std::time::SystemTime>,
    /// The settings it was built from (`[[clients]]` entry, default concurrency): a reload keeps
    /// this entry, with its limiter and semaphore state, while they are unchanged.
    pub built_from: (ClientConfig, usize),
}

impl ClientEntry {
    fn new(index: usize, c: &ClientConfig, default_concurrency: usize) -> Self {
        let limiter = c
            .rpm
            .map(|rpm| Gcra::per_minute(rpm, c.burst.unwrap_or(rpm)));
        let shared = crate::fleet::Spec {
            requests: limiter
                .as_ref()
                .map(|g| (g.interval / 1000, g.tolerance / 1000)),
            token_interval: c.tpm.map(|t| (60_000_000 / t.max(1)).max(1)),
            tokens_per_day: c.tokens_per_day,
        };
        Self {
            id: Arc::from(c.id.as_str()),
            index,
            limiter,
            concurrency: Some(Arc::new(Semaphore::new(
                c.max_concurrent.map_or(default_concurrency, |n| n as usize),
            ))),
            budget: budget::TokenBudget::new(c.tpm, c.tokens_per_day),
            shared,
            models: c.models.clone(),
            expires: c.expires_at().ok().flatten(),
            built_from: (c.clone(), default_concurrency),
        }
    }
}

/// What a rebuild of the registry (a config reload) carries over from the one it replaces.
pub struct Prior<'a> {
    /// The registry being replaced: its entries whose settings are unchanged are kept.
    pub registry: &'a ClientRegistry,
    /// The metrics slot of a client id (`Metrics::client_slot`).
    pub slot: &'a dyn Fn(&str) -> usize,
    /// Keep the JWT issuers' key sets (`[[auth.jwt]]` unchanged).
    pub keep_jwks: bool,
}

/// Digest → client, certificate name → client, and the JWT issuers. Built at start-up and at
/// each config reload (`rebuild`).
pub struct ClientRegistry {
    /// Every client, in config order.
    all: Vec<Arc<ClientEntry>>,
    by_digest: HashMap<[u8; 32], Arc<ClientEntry>>,
    /// `cert_san_uri`, `cert_san_dns` and `cert_subject_cn` (kept apart: a URI never matches a
    /// DNS name or a CN).
    by_cert_uri: HashMap<String, Arc<ClientEntry>>,
    by_cert_dns: HashMap<String, Arc<ClientEntry>>,
    by_cert_cn: HashMap<String, Arc<ClientEntry>>,
    jwt: Option<JwtAuth>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Unknown,
    /// Two different credentials (e.g. a key and a JWT, or a key in `Authorization` and another
    /// known key in `X-Api-Key`): refused, never resolved by precedence.
    TwoCredentials,
    /// A known key past its `expires`.
    KeyExpired,
    /// A verified client certificate that maps to no `[[clients]]` entry.
    UnmappedCertificate,
    Jwt(JwtFailure),
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing_key",
            Self::Malformed => "malformed_key",
            Self::Unknown => "unknown_key",
            Self::TwoCredentials => "two_credentials",
            Self::UnmappedCertificate => "unmapped_certificate",
            Self::KeyExpired => "key_expired",
            Self::Jwt(j) => j.reason(),
        }
    }

    /// The method a refused credential tried (`auth` of its `denied` record), when known.
    pub fn method(self) -> Option<AuthMethod> {
        match self {
            Self::Jwt(_) => Some(AuthMethod::Jwt),
            Self::Unknown | Self::KeyExpired => Some(AuthMethod::Key),
            Self::UnmappedCertificate => Some(AuthMethod::Mtls),
            _ => None,
        }
    }

    /// A JWT check that a refetch of its issuer's keys could turn around.
    pub fn wants_refetch(self) -> bool {
        self == Self::Jwt(JwtFailure::UnknownKid)
    }
}

impl ClientRegistry {
    /// Build from validated config (digests are 64 hex chars); a client without its own
    /// `max_concurrent` gets `default_concurrency` (`limits.client_concurrency_default()`).
    /// Fails only when a `jwks_file` cannot be read or parsed (the message names the field).
    pub fn new(
        clients: &[ClientConfig],
        issuers: &[JwtIssuerConfig],
        default_concurrency: usize,
    ) -> Result<Self, String> {
        Self::rebuild(clients, issuers, default_concurrency, None)
    }

    /// `new`, keeping from `prior` (a reload) the entries of unchanged clients: their rate
    /// limiter, concurrency and token budget state live on; a client's metrics slot follows its id.
    pub fn rebuild(
        clients: &[ClientConfig],
        issuers: &[JwtIssuerConfig],
        default_concurrency: usize,
        prior: Option<&Prior<'_>>,
    ) -> Result<Self, String> {
        let mut by_digest = HashMap::new();
        let mut subjects = HashMap::new();
        let (mut by_cert_uri, mut by_cert_dns) = (HashMap::new(), HashMap::new());
        let kept: HashMap<&str, &Arc<ClientEntry>> = prior
            .map(|p| p.registry.all.iter().map(|e| (&*e.id, e)).collect())
            .unwrap_or_default();
        let mut all = Vec::with_capacity(clients.len());
        let mut by_cert_cn = HashMap::new();
        for (index, c) in clients.iter().enumerate() {
            let entry = match kept.get(c.id.as_str()) {
                Some(e) if e.built_from.0 == *c && e.built_from.1 == default_concurrency => {
                    (*e).clone()
                }
                _ => {
                    let slot = prior.map_or(index, |p| (p.slot)(&c.id));
                    Arc::new(ClientEntry::new(slot, c, default_concurrency))
                }
            };
            all.push(entry.clone());
            let mut d = [0u8; 32];
            if let Some(hex_digest) = &c.key_sha256 {
                if hex::decode_to_slice(hex_digest.to_ascii_lowercase(), &mut d).is_ok() {
                    by_digest.insert(d, entry.clone());
                }
            }
            if let Some(u) = &c.cert_san_uri {
                by_cert_uri.insert(u.clone(), entry.clone());
            }
            if let Some(d) = &c.cert_san_dns {
                by_cert_dns.insert(d.to_ascii_lowercase(), entry.clone());
            }
            if let Some(cn) = &c.cert_subject_cn {
                by_cert_cn.insert(cn.clone(), entry.clone());
            }
            if let Some(sub) = &c.jwt_subject {
                subjects.insert((c.jwt_issuer.clone(), sub.clone()), entry);
            }
        }
        let jwt = if issuers.is_empty() {
            None
        } else {
            let keys = prior
                .filter(|p| p.keep_jwks)
                .and_then(|p| p.registry.jwt.as_ref())
                .map(|j| j.issuers().iter().map(|i| i.jwks.clone()).collect());
            Some(JwtAuth::with_keys(issuers, subjects, keys)?)
        };
        Ok(Self {
            all,
            by_digest,
            by_cert_uri,
            by_cert_dns,
            by_cert_cn,
            jwt,
        })
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn jwt(&self) -> Option<&JwtAuth> {
        self.jwt.as_ref()
    }

    /// Authenticate a request's headers without I/O. `Err(f)` with `f.wants_refetch()` means
    /// `authenticate_refetching` may still succeed.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthFailure> {
        self.authenticate_with(headers, None)
    }

    /// `authenticate` for a request whose connection presented the verified client certificate
    /// `peer`: the certificate is the credential, so any `Authorization` as well is refused.
    pub fn authenticate_with(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerIdentity>,
    ) -> Result<Principal, AuthFailure> {
        if let Some(peer) = peer {
            if headers.contains_key(http::header::AUTHORIZATION) {
                return Err(AuthFailure::TwoCredentials);
            }
            return self.by_cert(peer);
        }
        let token = self.credential(headers)?;
        match &self.jwt {
            Some(j) if looks_like_jwt(token) => match j.check(token) {
                Outcome::Done(r) => r.map_err(AuthFailure::Jwt),
                Outcome::Refetch(_) => Err(AuthFailure::Jwt(JwtFailure::UnknownKid)),
            },
            _ => self.by_key(token),
        }
    }

    /// `authenticate` for a JWT whose issuer's keys lack its `kid`: one rate-limited refetch.
    pub async fn authenticate_refetching(
        &self,
        headers: &HeaderMap,
    ) -> Result<Principal, AuthFailure> {
        let token = self.credential(headers)?;
        match &self.jwt {
            Some(j) => j.authenticate(token).await.map_err(AuthFailure::Jwt),
            None => Err(AuthFailure::Malformed),
        }
    }

    fn by_cert(&self, peer: &PeerIdentity) -> Result<Principal, AuthFailure> {
        let uri = peer
            .uris
            .iter()
            .find_map(|u| Some((u, self.by_cert_uri.get(&**u)?)));
        let dns = || {
            peer.dns
                .iter()
                .find_map(|d| Some((d, self.by_cert_dns.get(&d.to_ascii_lowercase())?)))
        };
        // The subject CN only when no SAN maps (SANs are the names RFC 6125 prefers).
        let cn = || {
            let cn = peer.cn.as_ref()?;
            Some((cn, self.by_cert_cn.get(&**cn)?))
        };
        let (name, entry) = uri
            .or_else(dns)
            .or_else(cn)
            .ok_or(AuthFailure::UnmappedCertificate)?;
        Ok(Principal(
            entry.clone(),
            Via {
                method: AuthMethod::Mtls,
                subject: Some(name.clone()),
            },
        ))
    }

    fn by_key(&self, token: &[u8]) -> Result<Principal, AuthFailure> {
        if token.len() > MAX_KEY_BYTES {
            return Err(AuthFailure::Malformed);
        }
        let digest: [u8; 32] = Sha256::digest(token).into();
        let e = self.by_digest.get(&digest).ok_or(AuthFailure::Unknown)?;
        if e.expires.is_some_and(|t| std::time::SystemTime::now() >= t) {
            return Err(AuthFailure::KeyExpired);
        }
        Ok(Principal(e.clone(), VIA_KEY))
    }

    /// The one credential of a request: the `Authorization` bearer token. `X-Api-Key` and
    /// `Api-Key` are not accepted on their own, but one holding a *different* credential (a
    /// known key, or a JWT when issuers are configured) makes the request ambiguous: refused.
    fn credential<'h>(&self, headers: &'h HeaderMap) -> Result<&'h [u8], AuthFailure> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthFailure::Missing)?;
        if values.next().is_some() {
            return Err(AuthFailure::Malformed);
        }
        let token =
            bearer_token_max(value.as_bytes(), MAX_JWT_BYTES).ok_or(AuthFailure::Malformed)?;
        for name in [&X_API_KEY, &API_KEY] {
            for other in headers.get_all(name) {
                let other = other.as_bytes();
                if other == token {
                    continue;
                }
                let jwt = self.jwt.is_some() && looks_like_jwt(other);
                if jwt || self.by_key(other).is_ok() {
                    return Err(AuthFailure::TwoCredentials);
                }
            }
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests;
