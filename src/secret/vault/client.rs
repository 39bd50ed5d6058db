//! Raw Vault calls through the vaultrs client: one endpoint type answering with JSON (tolerant of
//! servers that omit fields), and `CallError`, whose messages never carry a request or a body.

use rustify::enums::{RequestMethod, RequestType, ResponseType};
use serde_json::Value;
use std::time::Duration;
use vaultrs::client::VaultClient;
use vaultrs::error::ClientError;

/// One raw Vault call answering with JSON, parsed as a `Value` (tolerant of missing fields).
pub(super) struct Raw {
    pub method: RequestMethod,
    pub path: String,
    pub query: Option<String>,
    pub body: Option<Vec<u8>>,
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

#[derive(Debug)]
pub(super) enum CallError {
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

/// One call; `body` is sent as JSON.
pub(super) async fn call(
    client: &VaultClient,
    method: RequestMethod,
    path: String,
    query: Option<String>,
    body: Option<Vec<u8>>,
) -> Result<Value, CallError> {
    let ep = Raw {
        method,
        path,
        query,
        body,
    };
    Ok(vaultrs::api::exec_with_no_result(client, ep).await?)
}

/// The HTTP client for Vault calls, replacing the one vaultrs builds: the same TLS settings
/// (rustls, `ca_file` added to the system roots, a timeout per call), but **no redirects** (a
/// 3xx from the Vault address would otherwise replay `X-Vault-Token`, or a login body with its
/// secret-id or JWT, to wherever `Location` points) and **no proxy from the environment**
/// (`HTTPS_PROXY` would route the token through a host nobody configured).
pub(super) fn http_client(
    address: &str,
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<rustify::clients::reqwest::Client, String> {
    let mut b = reqwest::ClientBuilder::new()
        .tls_backend_rustls()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout);
    if address.starts_with("http://") {
        // As vaultrs does (reqwest#2988): no TLS roots are needed for plain http.
        b = b.tls_certs_only(Vec::new());
    } else if let Some(path) = ca_file {
        let certs = crate::tls::reqwest_roots(path, "secret.ca_file")?;
        b = b.tls_certs_merge(certs);
    }
    let http = b
        .build()
        .map_err(|e| format!("secret: cannot build the Vault HTTP client: {e}"))?;
    Ok(rustify::clients::reqwest::Client::new(address, http))
}
