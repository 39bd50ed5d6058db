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

/// Go's `net/http` answer to plain HTTP on a TLS port (a Vault or OpenBao server).
const PLAIN_TO_TLS: &str = "HTTP request to an HTTPS server";

impl From<ClientError> for CallError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::APIError { code: 400, errors }
                if errors.iter().any(|m| m.contains(PLAIN_TO_TLS)) =>
            {
                Self::Transport(HTTP_TO_TLS.into())
            }
            ClientError::APIError { code: 403, .. } => Self::Forbidden,
            ClientError::APIError { code, .. } => Self::Status(code),
            ClientError::RestClientError { source } => match source {
                rustify::errors::ClientError::ServerResponseError { code: 400, content }
                    if content.as_deref().is_some_and(|c| c.contains(PLAIN_TO_TLS)) =>
                {
                    Self::Transport(HTTP_TO_TLS.into())
                }
                rustify::errors::ClientError::ServerResponseError { code: 403, .. } => {
                    Self::Forbidden
                }
                rustify::errors::ClientError::ServerResponseError { code, .. } => {
                    Self::Status(code)
                }
                // Never include the request (it may carry a credential): the cause only.
                rustify::errors::ClientError::RequestError { source, url, .. } => {
                    Self::Transport(transport_cause(source.as_ref(), url.starts_with("http://")))
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

const HTTP_TO_TLS: &str =
    "the server speaks TLS on that port: secret.address must start with https://";

/// Why a Vault call failed to get an answer, from the error chain: the TLS cause (unknown CA,
/// wrong name, expired, a server that does not speak TLS) as upstream TLS errors name it, or
/// the connection's. Nothing from the request is included.
fn transport_cause(e: &(dyn std::error::Error + 'static), plain_http: bool) -> String {
    let mut cur = Some(e);
    let mut io_kind = None;
    let mut reqwest_kind = None;
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<rustls::Error>() {
            return tls_cause(t);
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
            // `io::Error::source` skips the wrapped error itself; the connector nests them.
            let mut inner = io.get_ref();
            while let Some(i) = inner {
                if let Some(t) = i.downcast_ref::<rustls::Error>() {
                    return tls_cause(t);
                }
                inner = i.downcast_ref::<std::io::Error>().and_then(|e| e.get_ref());
            }
        }
        if let Some(r) = c.downcast_ref::<reqwest::Error>() {
            reqwest_kind.get_or_insert((r.is_timeout(), r.is_connect()));
        }
        cur = c.source();
    }
    let hint = if plain_http {
        " (if the server speaks TLS, secret.address must start with https://)"
    } else {
        ""
    };
    match (io_kind, reqwest_kind) {
        (_, Some((true, _))) => "timed out (secret.timeout)".into(),
        (Some(std::io::ErrorKind::ConnectionRefused), _) => "connection refused".into(),
        (Some(k), _) => format!("connection failed: {k}{hint}"),
        (None, Some((_, true))) => "cannot connect".into(),
        _ => format!("no valid HTTP response{hint}"),
    }
}

fn tls_cause(t: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match t {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "TLS: the server's certificate is signed by an unknown CA (set secret.ca_file to the CA that issued it)".into(),
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "TLS: the server's certificate is not valid for the host in secret.address".into()
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "TLS: the server's certificate has expired".into()
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "TLS handshake failed: the server does not speak TLS (secret.address says https://; is it an http:// server?)".into()
        }
        other => format!("TLS: {other}"),
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
