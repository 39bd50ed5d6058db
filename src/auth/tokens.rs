//! JWT bearer authentication: `[[auth.jwt]]` issuers, the subject → client map, and a bounded
//! cache of verified tokens keyed by the token's SHA-256 (never the token itself), each entry
//! dropped once the token's `exp` (plus leeway) passes, so a client reusing its token pays the
//! signature check once. The cache stores only successes: a refused token is checked again.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::jwks::Jwks;
use super::jwt::{self, JwtFailure, Rules, Unverified};
use super::{AuthMethod, ClientEntry, Principal, Via};
use crate::config::JwtIssuerConfig;

/// Verified tokens kept at most (about 200 bytes each).
pub const CACHE_ENTRIES: usize = 10_000;

pub struct Issuer {
    pub issuer: String,
    rules: Rules,
    pub jwks: Arc<Jwks>,
}

pub struct JwtAuth {
    issuers: Vec<Issuer>,
    /// (issuer or none for "any issuer", subject) → client.
    subjects: HashMap<(Option<String>, String), Arc<ClientEntry>>,
    cache: Mutex<HashMap<[u8; 32], (Principal, u64)>>,
}

/// The result of a check that may need the issuer's keys refetched first.
pub enum Outcome {
    Done(Result<Principal, JwtFailure>),
    /// Unknown `kid` at issuer `.0`: refetch its keys (rate-limited), then check again.
    Refetch(usize),
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl JwtAuth {
    pub fn new(
        cfgs: &[JwtIssuerConfig],
        subjects: HashMap<(Option<String>, String), Arc<ClientEntry>>,
    ) -> Result<Self, String> {
        Self::with_keys(cfgs, subjects, None)
    }

    /// `new`, with the key sets of an earlier build of the same issuers (a config reload that
    /// left `[[auth.jwt]]` alone keeps them, and their refreshers, instead of reading them anew).
    pub fn with_keys(
        cfgs: &[JwtIssuerConfig],
        subjects: HashMap<(Option<String>, String), Arc<ClientEntry>>,
        keys: Option<Vec<Arc<Jwks>>>,
    ) -> Result<Self, String> {
        let mut keys = keys.filter(|k| k.len() == cfgs.len()).map(Vec::into_iter);
        let issuers = cfgs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let jwks = match keys.as_mut().and_then(Iterator::next) {
                    Some(k) => k,
                    None => Arc::new(Jwks::new(c, &format!("auth.jwt[{i}]"))?),
                };
                Ok(Issuer {
                    issuer: c.issuer.clone(),
                    rules: Rules {
                        algorithms: c.algorithms.clone(),
                        audiences: c.audiences.clone(),
                        subject_claim: c.subject_claim.clone(),
                        leeway_secs: c.leeway.as_secs(),
                    },
                    jwks,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            issuers,
            subjects,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn issuers(&self) -> &[Issuer] {
        &self.issuers
    }

    /// Check `token` (already known to look like a JWT) without I/O.
    pub fn check(&self, token: &[u8]) -> Outcome {
        let now = unix_now();
        let digest: [u8; 32] = Sha256::digest(token).into();
        if let Ok(cache) = self.cache.lock() {
            if let Some((p, until)) = cache.get(&digest) {
                if now < *until {
                    return Outcome::Done(Ok(p.clone()));
                }
            }
        }
        let t = match Unverified::parse(token) {
            Ok(t) => t,
            Err(e) => return Outcome::Done(Err(e)),
        };
        let Some(idx) = self
            .issuers
            .iter()
            .position(|i| Some(i.issuer.as_str()) == t.issuer())
        else {
            return Outcome::Done(Err(JwtFailure::UnknownIssuer));
        };
        let iss = &self.issuers[idx];
        let Some(keys) = iss.jwks.current() else {
            return Outcome::Refetch(idx);
        };
        let v = match jwt::verify(&t, &keys, &iss.rules, now) {
            Ok(v) => v,
            Err(JwtFailure::UnknownKid) => return Outcome::Refetch(idx),
            Err(e) => return Outcome::Done(Err(e)),
        };
        let key = (Some(iss.issuer.clone()), v.subject);
        let entry = self.subjects.get(&key).or_else(|| {
            let any = (None, key.1.clone());
            self.subjects.get(&any)
        });
        let Some(entry) = entry else {
            return Outcome::Done(Err(JwtFailure::UnmappedSubject));
        };
        let p = Principal(
            entry.clone(),
            Via {
                method: AuthMethod::Jwt,
                subject: Some(Arc::from(key.1.as_str())),
            },
        );
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.retain(|_, (_, until)| now < *until);
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(digest, (p.clone(), v.valid_until));
        }
        Outcome::Done(Ok(p))
    }

    /// `check`, refetching the issuer's keys once (rate-limited) for an unknown `kid` or a key
    /// set that is missing or too stale.
    pub async fn authenticate(&self, token: &[u8]) -> Result<Principal, JwtFailure> {
        let idx = match self.check(token) {
            Outcome::Done(r) => return r,
            Outcome::Refetch(idx) => idx,
        };
        let jwks = &self.issuers[idx].jwks;
        jwks.refetch_for_unknown_kid().await;
        match self.check(token) {
            Outcome::Done(r) => r,
            Outcome::Refetch(_) if jwks.current().is_none() => Err(JwtFailure::KeysUnavailable),
            Outcome::Refetch(_) => Err(JwtFailure::UnknownKid),
        }
    }
}
