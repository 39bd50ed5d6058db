//! Getting and keeping a Vault token: read from `token_file`, or log in (AppRole, Kubernetes, jwt)
//! with credentials read from files at each login (a wrapped AppRole secret-id is unwrapped once
//! and kept), renew on the `TokenSchedule`, log in again when a renewal is refused or the token
//! nears its max TTL; `agent` does none of it. Every step is an audit event.

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
use crate::telemetry::spans;
use tracing::Instrument;

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
                self.accessor = None;
                // Looked up first, so the record carries the token's accessor.
                self.learn_token_ttl().await;
                self.event(Event::VaultLogin, "token read from token_file".into(), None);
            } else if self.token.is_none() {
                self.learn_token_ttl().await;
            }
            drop(token);
            if self
                .token
                .is_some_and(|t| t.file_action(now) == Action::Renew)
            {
                let _ = self.traced_renew().await;
            }
            return Ok(());
        }
        if matches!(self.cfg.auth, VaultAuthConfig::Agent(_)) {
            // The local Vault Proxy / Agent adds its auto-auth token; nimgate holds none.
            return Ok(());
        }
        match self.token.map_or(Action::Login, |t| t.action(now)) {
            Action::Keep => Ok(()),
            Action::Renew if self.traced_renew().await.is_ok() => Ok(()),
            Action::Renew | Action::Login => self.traced_login().await,
        }
    }

    /// `login` in a `vault login` span (with tracing on).
    pub(super) async fn traced_login(&mut self) -> Result<(), SecretError> {
        let span = spans::background("vault login", "vault");
        let r = self.login().instrument(span.clone()).await;
        if r.is_err() {
            spans::failed(&span, "login_failed");
        }
        r
    }

    /// `renew` in a `vault renew` span (with tracing on).
    async fn traced_renew(&mut self) -> Result<(), ()> {
        let span = spans::background("vault renew", "vault");
        let r = self.renew().instrument(span.clone()).await;
        if r.is_err() {
            spans::failed(&span, "renew_failed");
        }
        r
    }

    pub(super) async fn login(&mut self) -> Result<(), SecretError> {
        let (mount, body, method) = match &self.cfg.auth {
            VaultAuthConfig::Approle(a) => {
                let a = a.clone();
                let role_id = read_cred(&a.role_id_file, "secret.auth.role_id_file")?;
                let secret_id = if a.secret_id_wrapped {
                    self.unwrapped_secret_id(&a.secret_id_file).await?
                } else {
                    read_cred(&a.secret_id_file, "secret.auth.secret_id_file")?
                };
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
            VaultAuthConfig::Jwt(j) => {
                // Re-read at every login, like the Kubernetes method: such tokens are short-lived.
                let jwt = read_cred(&j.jwt_file, "secret.auth.jwt_file")?;
                (
                    j.mount.clone(),
                    serde_json::json!({"role": j.role, "jwt": jwt.as_str()}),
                    "jwt",
                )
            }
            VaultAuthConfig::Token(_) | VaultAuthConfig::Agent(_) => return Ok(()),
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
                self.accessor = None;
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
        self.last_request_id = v["request_id"].as_str().map(str::to_owned);
        self.accessor = auth["accessor"].as_str().map(str::to_owned);
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

    /// The secret-id behind the response-wrapping token in `path`: unwrapped once
    /// (`sys/wrapping/unwrap`), then kept in memory for re-logins. The file is re-read at each
    /// login only to notice a new wrapping token; a token already used (by nimgate, or refused
    /// by Vault) is never sent again.
    async fn unwrapped_secret_id(&mut self, path: &Path) -> Result<Zeroizing<String>, SecretError> {
        let wrapping = read_cred(path, "secret.auth.secret_id_file")?;
        let d = digest(&wrapping);
        if let Some((seen, sid)) = &self.unwrapped {
            if *seen == d {
                return Ok(sid.clone());
            }
        }
        if self.unwrap_refused.as_deref() == Some(d.as_str()) {
            return Err(SecretError::unavailable(format!(
                "the wrapping token in secret.auth.secret_id_file {} was already refused by Vault; write a new one",
                path.display()
            )));
        }
        // The wrapping token is the only credential of this call; the client's own token (if
        // any) is dropped, login sets a new one.
        self.client.set_token(&wrapping);
        drop(wrapping);
        let res = call(
            &self.client,
            RequestMethod::POST,
            "sys/wrapping/unwrap".into(),
            None,
            None,
        )
        .await;
        self.client.set_token("");
        self.token = None;
        let mut v = match res {
            Ok(v) => v,
            Err(e @ (CallError::Status(400) | CallError::Forbidden)) => {
                self.unwrap_refused = Some(d);
                let msg = format!(
                    "the wrapping token in secret.auth.secret_id_file {} is not valid ({e}): it was \
                     already used, has expired or was never a wrapping token. If nimgate did not \
                     unwrap it, someone else may have: treat that secret-id as compromised, \
                     destroy it and deliver a new wrapped one",
                    path.display()
                );
                tracing::error!(path = %path.display(), "AppRole wrapping token refused by Vault: already used or expired; someone else may have unwrapped the secret-id");
                self.event(
                    Event::VaultLogin,
                    msg.clone(),
                    Some("wrapping_token_used".into()),
                );
                return Err(SecretError::unavailable(msg));
            }
            Err(e) => {
                // Unreachable or sealed: the token is unused as far as we know; try again later.
                self.event(
                    Event::VaultLogin,
                    format!("approle secret-id unwrap failed: {e}"),
                    Some("failure".into()),
                );
                return Err(SecretError::unavailable(format!(
                    "Vault sys/wrapping/unwrap failed: {e}"
                )));
            }
        };
        let request_id = v["request_id"].as_str().map(str::to_owned);
        let sid = v["data"]["secret_id"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(|s| Zeroizing::new(s.to_string()));
        super::super::scrub(&mut v);
        let Some(sid) = sid else {
            self.unwrap_refused = Some(d);
            let msg = "the wrapping token in secret.auth.secret_id_file did not wrap a secret-id \
                       (no data.secret_id in the unwrapped response)"
                .to_string();
            self.event(Event::VaultLogin, msg.clone(), Some("failure".into()));
            return Err(SecretError::unavailable(msg));
        };
        self.last_request_id = request_id;
        // The unwrap was made with the wrapping token, not with a login token.
        self.accessor = None;
        self.event(
            Event::VaultLogin,
            "approle secret-id unwrapped from the wrapping token in secret_id_file".into(),
            None,
        );
        self.unwrapped = Some((d, sid.clone()));
        Ok(sid)
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
                self.last_request_id = v["request_id"].as_str().map(str::to_owned);
                self.accessor = v["data"]["accessor"].as_str().map(str::to_owned);
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
                self.last_request_id = v["request_id"].as_str().map(str::to_owned);
                if let Some(a) = v["auth"]["accessor"].as_str() {
                    self.accessor = Some(a.to_owned());
                }
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
