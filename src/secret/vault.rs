//! `source = "vault"`: the key in a Vault KV (v1 or v2) secret, through a `vaultrs` client.
//!
//! Login (token file, AppRole, Kubernetes — every credential read from a file, never from the
//! environment or config text), renewal at ~2/3 of the token's TTL, re-login when renewal is
//! refused, the token nears its max TTL, or any call answers 403. Reads use a tolerant raw
//! endpoint so that servers returning KV v2 data without `metadata` still work.
//!
//! The Vault token lives in the vaultrs client (whose settings type derives `Debug`): this module
//! never formats the client, and the logging filter silences vaultrs/rustify/reqwest entirely.

use futures_util::future::BoxFuture;
use rustify::enums::{RequestMethod, RequestType, ResponseType};
use secrecy::SecretString;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::{content_version, Fetched, SecretError, SecretErrorKind, SecretSource};
use crate::audit::Record;
use crate::config::{VaultAuthConfig, VaultSecretConfig};

/// One raw Vault call answering with JSON, parsed as a `Value` (tolerant of missing fields).
struct Raw {
    method: RequestMethod,
    path: String,
    query: Option<String>,
    body: Option<Vec<u8>>,
}

impl rustify::endpoint::Endpoint for Raw {
    type Response = Value;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;
    fn path(&self) -> String {
        self.path.clone()
    }
    fn method(&self) -> RequestMethod {
        self.method.clone()
    }
    fn query(&self) -> Result<Option<String>, rustify::errors::ClientError> {
        Ok(self.query.clone())
    }
    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        Ok(self.body.clone())
    }
}

struct Token {
    expires_at: Instant,
    /// When to act next: renew (if renewable and not near max TTL) or log in again.
    act_at: Instant,
    renewable: bool,
    ttl: Duration,
    /// Token from `token_file`: cannot log in again, only re-read the file.
    from_file: bool,
}

pub struct VaultSource {
    cfg: VaultSecretConfig,
    client: VaultClient,
    token: Option<Token>,
    token_file_digest: Option<String>,
    events: Vec<Record>,
}

impl std::fmt::Debug for VaultSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSource")
            .field("address", &self.cfg.address)
            .field("path", &self.cfg.path)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum CallError {
    Forbidden,
    Status(u16),
    Transport(String),
    Parse(String),
}

impl From<ClientError> for CallError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::APIError { code: 403, .. } => Self::Forbidden,
            ClientError::APIError { code, .. } => Self::Status(code),
            ClientError::RestClientError { source } => match source {
                rustify::errors::ClientError::ServerResponseError { code: 403, .. } => {
                    Self::Forbidden
                }
                rustify::errors::ClientError::ServerResponseError { code, .. } => {
                    Self::Status(code)
                }
                // Never include the request (it may carry a credential); the kind is enough.
                rustify::errors::ClientError::RequestError { .. } => {
                    Self::Transport("request failed (connection or timeout)".into())
                }
                other => Self::Transport(short_kind(&other.to_string())),
            },
            ClientError::JsonParseError { .. }
            | ClientError::ResponseEmptyError
            | ClientError::ResponseDataEmptyError => {
                Self::Parse("unexpected response shape".into())
            }
            other => Self::Transport(short_kind(&other.to_string())),
        }
    }
}

/// The first clause of an error message, without anything that looks like it could be data.
fn short_kind(s: &str) -> String {
    s.split([':', '{', '"'])
        .next()
        .unwrap_or("error")
        .trim()
        .chars()
        .take(80)
        .collect()
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Forbidden => write!(f, "403 permission denied"),
            Self::Status(c) => write!(f, "HTTP {c}"),
            Self::Transport(m) => write!(f, "unreachable: {m}"),
            Self::Parse(m) => write!(f, "{m}"),
        }
    }
}

fn read_cred(path: &Path, what: &str) -> Result<Zeroizing<String>, SecretError> {
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

fn digest(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

impl VaultSource {
    pub fn new(cfg: &VaultSecretConfig) -> Result<Self, String> {
        let mut b = VaultClientSettingsBuilder::default();
        // Every setting explicit, so nothing is taken from VAULT_* environment variables.
        b.address(cfg.address.as_str())
            .token("")
            .ca_certs(
                cfg.ca_file
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>(),
            )
            .identity(None)
            .verify(true)
            .timeout(Some(cfg.timeout))
            .namespace(cfg.namespace.clone());
        let settings = b.build().map_err(|e| format!("secret.address: {e}"))?;
        let client = VaultClient::new(settings)
            .map_err(|e| format!("secret: cannot build Vault client: {e}"))?;
        Ok(Self {
            cfg: cfg.clone(),
            client,
            token: None,
            token_file_digest: None,
            events: Vec::new(),
        })
    }

    async fn call(
        &self,
        method: RequestMethod,
        path: String,
        query: Option<String>,
        body: Option<Value>,
    ) -> Result<Value, CallError> {
        let ep = Raw {
            method,
            path,
            query,
            body: body.map(|b| b.to_string().into_bytes()),
        };
        Ok(vaultrs::api::exec_with_no_result(&self.client, ep).await?)
    }

    fn event(&mut self, name: &'static str, detail: String, reason: Option<String>) {
        let mut r = Record::event(name);
        r.source = Some("vault");
        r.detail = Some(detail);
        r.reason = reason;
        self.events.push(r);
    }

    /// Make sure a usable token is set: log in, renew, or re-read the token file as due.
    async fn ensure_token(&mut self, force_login: bool) -> Result<(), SecretError> {
        let now = Instant::now();
        if let VaultAuthConfig::Token(t) = &self.cfg.auth {
            let path = t.token_file.clone();
            let token = read_cred(&path, "secret.auth.token_file")?;
            let d = digest(&token);
            if self.token_file_digest.as_deref() != Some(d.as_str()) {
                self.client.set_token(&token);
                self.token_file_digest = Some(d);
                self.token = None;
                self.event("vault_login", "token read from token_file".into(), None);
            }
            drop(token);
            if self.token.is_none() {
                self.learn_token_ttl().await;
            }
            if let Some(tok) = &self.token {
                if tok.renewable && now >= tok.act_at {
                    let _ = self.renew().await;
                }
            }
            return Ok(());
        }
        let due = match &self.token {
            None => true,
            Some(t) => {
                force_login
                    || now + (t.ttl / 10).min(Duration::from_secs(1)) >= t.expires_at
                    || (now >= t.act_at && !t.renewable)
            }
        };
        if !due {
            if let Some(t) = &self.token {
                if now >= t.act_at && t.renewable {
                    if self.renew().await.is_ok() {
                        return Ok(());
                    }
                } else {
                    return Ok(());
                }
            }
        }
        self.login().await
    }

    async fn login(&mut self) -> Result<(), SecretError> {
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
        let ep = Raw {
            method: RequestMethod::POST,
            path: format!("auth/{}/login", mount.trim_matches('/')),
            query: None,
            body: Some(body.to_vec()),
        };
        drop(body);
        let res = vaultrs::api::exec_with_no_result(&self.client, ep)
            .await
            .map_err(CallError::from);
        let v = match res {
            Ok(v) => v,
            Err(e) => {
                self.token = None;
                self.event(
                    "vault_login",
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
        self.set_token_times(ttl, renewable, false);
        self.event(
            "vault_login",
            format!(
                "{method} login ok, ttl {}s, renewable {renewable}",
                ttl.as_secs()
            ),
            None,
        );
        Ok(())
    }

    fn set_token_times(&mut self, ttl: Duration, renewable: bool, from_file: bool) {
        let now = Instant::now();
        // ttl 0 = no expiry (e.g. root tokens): re-check once a day.
        let (expires_at, act_at) = if ttl.is_zero() {
            (
                now + Duration::from_secs(86_400 * 365),
                now + Duration::from_secs(86_400),
            )
        } else {
            (now + ttl, now + ttl.mul_f64(2.0 / 3.0))
        };
        self.token = Some(Token {
            expires_at,
            act_at,
            renewable,
            ttl,
            from_file,
        });
    }

    /// For a token from a file: ask Vault its remaining TTL (best effort; servers without
    /// lookup-self just get no renewal schedule).
    async fn learn_token_ttl(&mut self) {
        match self
            .call(
                RequestMethod::GET,
                "auth/token/lookup-self".into(),
                None,
                None,
            )
            .await
        {
            Ok(v) => {
                let ttl = Duration::from_secs(v["data"]["ttl"].as_u64().unwrap_or(0));
                let renewable = v["data"]["renewable"].as_bool().unwrap_or(false);
                self.set_token_times(ttl, renewable, true);
            }
            Err(_) => self.set_token_times(Duration::ZERO, false, true),
        }
    }

    async fn renew(&mut self) -> Result<(), ()> {
        let Some(old_ttl) = self.token.as_ref().map(|t| t.ttl) else {
            return Err(());
        };
        let from_file = self.token.as_ref().is_some_and(|t| t.from_file);
        let body = serde_json::json!({"increment": format!("{}s", old_ttl.as_secs().max(1))});
        match self
            .call(
                RequestMethod::POST,
                "auth/token/renew-self".into(),
                None,
                Some(body),
            )
            .await
        {
            Ok(v) => {
                let granted =
                    Duration::from_secs(v["auth"]["lease_duration"].as_u64().unwrap_or(0));
                let renewable = v["auth"]["renewable"].as_bool().unwrap_or(false);
                // Granted less than asked: the token is near its max TTL; next time log in.
                let near_max = granted < old_ttl.mul_f64(0.9);
                self.set_token_times(granted, renewable && !near_max, from_file);
                if let Some(t) = self.token.as_mut() {
                    t.ttl = old_ttl;
                }
                self.event(
                    "vault_renew",
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
                self.event(
                    "vault_renew",
                    format!("renewal refused: {e}; logging in again"),
                    Some("failure".into()),
                );
                if let Some(t) = self.token.as_mut() {
                    t.renewable = false;
                    t.act_at = Instant::now();
                }
                Err(())
            }
        }
    }

    async fn read_secret(&self) -> Result<Fetched, CallError> {
        let mount = self.cfg.mount.trim_matches('/');
        let path = self.cfg.path.trim_matches('/');
        let (url, query) = if self.cfg.kv_version == 2 {
            (
                format!("{mount}/data/{path}"),
                self.cfg.version.map(|v| format!("version={v}")),
            )
        } else {
            (format!("{mount}/{path}"), None)
        };
        let mut v = self.call(RequestMethod::GET, url, query, None).await?;
        let version = v["data"]["metadata"]["version"].as_u64();
        let data = if self.cfg.kv_version == 2 {
            &mut v["data"]["data"]
        } else {
            &mut v["data"]
        };
        let field = &self.cfg.field;
        let taken = data.get_mut(field).map(Value::take);
        super::scrub(&mut v);
        let secret = match taken {
            Some(Value::String(k)) => SecretString::from(k),
            Some(mut other) => {
                super::scrub(&mut other);
                return Err(CallError::Parse(format!("field {field:?} is not a string")));
            }
            None => return Err(CallError::Parse(format!("secret has no field {field:?}"))),
        };
        let version = match version {
            Some(n) if self.cfg.kv_version == 2 => n.to_string(),
            _ => content_version(&secret),
        };
        Ok(Fetched { secret, version })
    }

    async fn fetch_inner(&mut self) -> Result<Fetched, SecretError> {
        self.ensure_token(false).await?;
        match self.read_secret().await {
            Ok(f) => Ok(f),
            Err(CallError::Forbidden) => {
                // The token may have expired or been revoked: get a fresh one and try once more.
                let relogged = match &self.cfg.auth {
                    VaultAuthConfig::Token(_) => {
                        self.token_file_digest = None;
                        self.ensure_token(false).await
                    }
                    _ => self.login().await,
                };
                relogged?;
                match self.read_secret().await {
                    Ok(f) => Ok(f),
                    Err(CallError::Forbidden) => Err(SecretError::new(
                        SecretErrorKind::Forbidden,
                        format!(
                            "403 reading {}/{}: access to the secret is denied",
                            self.cfg.mount, self.cfg.path
                        ),
                    )),
                    Err(e) => Err(map_read_err(e, &self.cfg)),
                }
            }
            Err(e) => Err(map_read_err(e, &self.cfg)),
        }
    }
}

fn map_read_err(e: CallError, cfg: &VaultSecretConfig) -> SecretError {
    let what = format!("reading {}/{}", cfg.mount, cfg.path);
    match e {
        CallError::Parse(m) => SecretError::invalid(format!("{what}: {m}")),
        CallError::Status(404) => SecretError::invalid(format!("{what}: not found (404)")),
        e => SecretError::unavailable(format!("{what}: {e}")),
    }
}

impl SecretSource for VaultSource {
    fn kind(&self) -> &'static str {
        "vault"
    }

    fn fetch(&mut self) -> BoxFuture<'_, Result<Fetched, SecretError>> {
        Box::pin(self.fetch_inner())
    }

    fn interval(&self) -> Duration {
        let refresh = self.cfg.refresh;
        match &self.token {
            Some(t) if !t.from_file || t.renewable => refresh.min(
                t.act_at
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(100)),
            ),
            _ => refresh,
        }
    }

    fn drain_events(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.events)
    }
}
