//! KV v2 writes, lists and reads for chain-head anchoring (`audit/anchor`): through this
//! source's client and token, with the same login, renewal and one re-login after a 403 as the
//! key's reads. Errors name the operation and path, never a body or a token.

use rustify::enums::RequestMethod;
use serde_json::Value;

use super::client::{call, CallError};
use super::VaultSource;
use crate::audit::Record;

impl VaultSource {
    /// One call with a usable token: a 403 gets one fresh login and one retry.
    async fn authed(
        &mut self,
        method: RequestMethod,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let what = || format!("{} {url}", method_name(&method));
        self.ensure_token()
            .await
            .map_err(|e| format!("{}: {}", what(), e.message))?;
        let body = body.map(|b| b.to_string().into_bytes());
        let first = call(&self.client, method.clone(), url.into(), None, body.clone()).await;
        let r = match first {
            Err(CallError::Forbidden) => {
                self.relogin()
                    .await
                    .map_err(|e| format!("{}: {}", what(), e.message))?;
                call(&self.client, method.clone(), url.into(), None, body).await
            }
            other => other,
        };
        r.map_err(|e| match e {
            CallError::Forbidden => format!(
                "{}: 403 permission denied (the token's policy does not allow it)",
                what()
            ),
            e => format!("{}: {e}", what()),
        })
    }

    /// Write `data` as the KV v2 secret `<mount>/data/<path>` (a new version).
    pub async fn kv2_write(&mut self, mount: &str, path: &str, data: &Value) -> Result<(), String> {
        let body = serde_json::json!({ "data": data });
        self.authed(
            RequestMethod::POST,
            &format!("{mount}/data/{path}"),
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// The keys under `<mount>/metadata/<path>` (none when it does not exist).
    pub async fn kv2_list(&mut self, mount: &str, path: &str) -> Result<Vec<String>, String> {
        let url = format!("{mount}/metadata/{path}");
        match self.authed(RequestMethod::LIST, &url, None).await {
            Ok(v) => Ok(v["data"]["keys"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()),
            Err(e) if e.ends_with("HTTP 404") => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The data of the KV v2 secret `<mount>/data/<path>` (latest version).
    pub async fn kv2_read(&mut self, mount: &str, path: &str) -> Result<Value, String> {
        let mut v = self
            .authed(RequestMethod::GET, &format!("{mount}/data/{path}"), None)
            .await?;
        Ok(v["data"]["data"].take())
    }

    /// Vault events (logins, renewals) of the calls above, for the audit trail.
    pub fn take_events(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.events)
    }
}

fn method_name(m: &RequestMethod) -> &'static str {
    match m {
        RequestMethod::POST => "writing",
        RequestMethod::LIST => "listing",
        _ => "reading",
    }
}
