//! Getting and keeping a Vault token: read from `token_file`, or log in (AppRole, Kubernetes) with
//! credentials read from files at each login, renew on the `TokenSchedule`, log in again when a
//! renewal is refused or the token nears its max TTL. Every step is an audit event.

use rustify::enums::RequestMethod;
use std::path::Path;
use std::time::{Duration, Instant};
use vaultrs::client::Client as _;
use zeroize::Zeroizing;

use super::client::{call, CallError};
use super::schedule::{Action, TokenSchedule};
use super::VaultSource;
use crate::audit::Event;
use crate::config::VaultAuthConfig;
use crate::secret::SecretError;

pub(super) fn read_cred(path: &Path, what: &str) -> Result<Zeroizing<String>, SecretError> {
    let s = std::fs::read_to_string(path).map_err(|e| {
        SecretError::unavailable(format!(
            "cannot read {what} {}: {}",
            path.display(),
            e.kind()
        ))
    })?;
    let t = Zeroizing::new(s.trim().to_string());
    drop(Zeroizing::new(s));
    if t.is_empty() {
        return Err(SecretError::unavailable(format!(
            "{what} {} is empty",
            path.display()
        )));
    }
    Ok(t)
}

pub(super) fn digest(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

impl VaultSource {
    /// Make sure a usable token is set: log in, renew, or re-read the token file as due.
    pub(super) async fn ensure_token(&mut self) -> Result<(), SecretError> {
        let now = Instant::now();
        if let VaultAuthConfig::Token(t) = &self.cfg.auth {
            let path = t.token_file.clone();
            let token = read_cred(&path, "secret.auth.token_file")?;
            let d = digest(&token);
            if self.token_file_digest.as_deref() != Some(d.as_str()) {
                self.client.set_token(&token);
                self.token_file_digest = Some(d);
                self.token = None;
                self.event(Event::VaultLogin, "token read from token_file".into(), None);
            }
            drop(token);
            if self.token.is_none() {
                self.learn_token_ttl().await;
            }
            if self
                .token
                .is_some_and(|t| t.file_action(now) == Action::Renew)
            {
                let _ = self.renew().await;
            }
            return Ok(());
        }
        match self.token.map_or(Action::Login, |t| t.action(now)) {
            Action::Keep => Ok(()),
            Action::Renew if self.renew().await.is_ok() => Ok(()),
            Action::Renew | Action::Login => self.login().await,
        }
    }

    pub(super) async fn login(&mut self) -> Result<(), SecretError> {
        let (mount, body, method) = match &self.cfg.auth {
            VaultAuthConfig::Approle(a) => {
                let role_id = read_cred(&a.role_id_file, "secret.auth.role_id_file")?;
                let secret_id = read_cred(&a.secret_id_file, "secret.auth.secret_id_file")?;
                (
                    a.mount.clone(),
                    serde_json::json!({"role_id": role_id.as_str(), "secret_id": secret_id.as_str()}),
                    "approle",
                )
            }
            VaultAuthConfig::Kubernetes(k) => {
                // Re-read at every login: projected service-account tokens expire and rotate.
                let jwt = read_cred(&k.jwt_file, "secret.auth.jwt_file")?;
                (
                    k.mount.clone(),
                    serde_json::json!({"role": k.role, "jwt": jwt.as_str()}),
                    "kubernetes",
                )
            }
            VaultAuthConfig::Token(_) => return Ok(()),
        };
        let body = Zeroizing::new(body.to_string().into_bytes());
        let path = format!("auth/{}/login", mount.trim_matches('/'));
        let res = call(
            &self.client,
            RequestMethod::POST,
            path,
            None,
            Some(body.to_vec()),
        )
        .await;
        drop(body);
        let v = match res {
            Ok(v) => v,
            Err(e) => {
                self.token = None;
                self.event(
                    Event::VaultLogin,
                    format!("{method} login failed: {e}"),
                    Some("failure".into()),
                );
                // Network errors and refused credentials alike keep the cached key until
                // max_staleness: a failed login says nothing about the secret itself.
                return Err(SecretError::unavailable(format!(
                    "Vault {method} login failed: {e}"
                )));
            }
        };
        let auth = &v["auth"];
        let Some(token) = auth["client_token"].as_str().filter(|t| !t.is_empty()) else {
            return Err(SecretError::unavailable(format!(
                "Vault {method} login: response has no auth.client_token"
            )));
        };
        self.client.set_token(token);
        let ttl = Duration::from_secs(auth["lease_duration"].as_u64().unwrap_or(0));
        let renewable = auth["renewable"].as_bool().unwrap_or(false);
        self.token = Some(TokenSchedule::granted(
            Instant::now(),
            ttl,
            renewable,
            false,
        ));
        self.event(
            Event::VaultLogin,
            format!(
                "{method} login ok, ttl {}s, renewable {renewable}",
                ttl.as_secs()
            ),
            None,
        );
        Ok(())
    }

    /// For a token from a file: ask Vault its remaining TTL (best effort; servers without
    /// lookup-self just get no renewal schedule).
    async fn learn_token_ttl(&mut self) {
        let lookup = call(
            &self.client,
            RequestMethod::GET,
            "auth/token/lookup-self".into(),
            None,
            None,
        )
        .await;
        match lookup {
            Ok(v) => {
                let ttl = Duration::from_secs(v["data"]["ttl"].as_u64().unwrap_or(0));
                let renewable = v["data"]["renewable"].as_bool().unwrap_or(false);
                self.token = Some(TokenSchedule::granted(Instant::now(), ttl, renewable, true));
            }
            // A server that refuses lookup-self (RustyVault has none): no renewal schedule.
            Err(CallError::Forbidden | CallError::Status(400..=499)) => {
                self.token = Some(TokenSchedule::granted(
                    Instant::now(),
                    Duration::ZERO,
                    false,
                    true,
                ));
            }
            // Unreachable, sealed or frozen: leave the token unknown, look it up again next time.
            Err(_) => self.token = None,
        }
    }

    async fn renew(&mut self) -> Result<(), ()> {
        let Some(sched) = self.token else {
            return Err(());
        };
        let body = serde_json::json!({"increment": format!("{}s", sched.ttl.as_secs().max(1))});
        let res = call(
            &self.client,
            RequestMethod::POST,
            "auth/token/renew-self".into(),
            None,
            Some(body.to_string().into_bytes()),
        )
        .await;
        match res {
            Ok(v) => {
                let granted =
                    Duration::from_secs(v["auth"]["lease_duration"].as_u64().unwrap_or(0));
                let renewable = v["auth"]["renewable"].as_bool().unwrap_or(false);
                let (next, near_max) = sched.renewed(Instant::now(), granted, renewable);
                self.token = Some(next);
                self.event(
                    Event::VaultRenew,
                    format!(
                        "renewed, ttl {}s{}",
                        granted.as_secs(),
                        if near_max {
                            " (near max TTL: next is a login)"
                        } else {
                            ""
                        }
                    ),
                    None,
                );
                Ok(())
            }
            Err(e) => {
                // Only Vault's own refusal (4xx) ends renewal; a timeout or a 5xx (a sealed or
                // frozen server) leaves the token renewable, and the next fetch tries again. A
                // token from a file has no login to fall back to, so giving up would let it
                // expire although Vault is back.
                let refused = matches!(e, CallError::Forbidden | CallError::Status(400..=499));
                let next = if refused || !sched.from_file {
                    "logging in again"
                } else {
                    "retrying at the next fetch"
                };
                self.event(
                    Event::VaultRenew,
                    format!("renewal failed: {e}; {next}"),
                    Some("failure".into()),
                );
                if refused {
                    if let Some(t) = self.token.as_mut() {
                        t.renewal_refused(Instant::now());
                    }
                }
                Err(())
            }
        }
    }
}
