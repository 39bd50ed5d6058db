//! TLS on both sides. Certificates change on their own schedule (cert-manager renews serving
//! certificates every few weeks; the kubelet swaps the mounted Secret's symlink), so every
//! certificate, key and CA file is polled by content (`watch`) every `server.tls_reload_interval`
//! and a changed set is rebuilt whole and swapped in; a set that fails its checks (`pair`:
//! parses, the key is the certificate's, the leaf is within its validity period) leaves the
//! current one in use, is logged with why, and counted (`nimgate_tls_reloads_total`).
//!
//! - `server`: the client listener's rustls config (serving pair, optional client-CA verifier).
//! - `upstream`: each upstream's client config (system roots plus `ca_file`, optional client
//!   certificate, `insecure` for the explicit `insecure_skip_verify`).
//! - here: PEM parsing (errors name the field and never quote key material), the crypto
//!   provider, the system roots (read once), the fixed client config of the Redis client and
//!   reqwest extra roots for the Vault and OTLP clients (those CA files are read at start only).

mod insecure;
mod pair;
mod server;
mod upstream;
mod validity;
mod watch;

pub use pair::{certified_key, Leaf};
pub use server::ServerTls;
pub use upstream::UpstreamTls;
pub use validity::{days_from_civil, validity, Validity};
pub use watch::ReloadStats;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// A TLS problem, naming the setting it is about (`server.tls_key`, `upstreams[1].ca_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub field: String,
    pub message: String,
}

impl TlsError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The one crypto provider (ring) every rustls config here is built with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system's trusted roots, read once per process (they change with the image, not at run
/// time); a certificate the store refuses is skipped, as browsers do.
pub fn system_roots() -> &'static rustls::RootCertStore {
    static R: OnceLock<rustls::RootCertStore> = OnceLock::new();
    R.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        roots
    })
}

/// The PEM certificates in `pem` (at least one); errors name `field` (fixed strings, like
/// `parse_key`'s: a combined PEM file may hold a key too).
pub fn parse_certs(pem: &[u8], field: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::new(field, "not a valid PEM certificate file"))?;
    if certs.is_empty() {
        return Err(TlsError::new(field, "no certificates found"));
    }
    Ok(certs)
}

/// The PEM private key in `pem`. Errors are fixed strings: a PEM parser's message may quote a
/// line of the file, and this file is a secret.
pub fn parse_key(pem: &[u8], field: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        TlsError::new(
            field,
            match e {
                pem::Error::NoItemsFound => "no PEM private key found",
                _ => "not a valid PEM private key",
            },
        )
    })
}

/// The certificates in the PEM file at `path` (preflight, tests).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_certs(&pem, &path.display().to_string()).map_err(|e| e.to_string())
}

/// A fixed server config from two PEM files, no client certificates (tests' TLS upstreams).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let files: [zeroize::Zeroizing<Vec<u8>>; 2] = [read(cert)?.into(), read(key)?.into()];
    server::build(&files, false, std::time::SystemTime::now())
        .map(|(c, _)| Arc::new(c))
        .map_err(|e| e.to_string())
}

/// A fixed client config trusting the system roots plus `ca_file` (the Redis client; upstreams
/// use `UpstreamTls`); errors name `field`.
pub fn client_config(ca_file: Option<&Path>, field: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = system_roots().clone();
    if let Some(path) = ca_file {
        for cert in load_certs(path).map_err(|e| format!("{field}: {e}"))? {
            roots.add(cert).map_err(|e| format!("{field}: {e}"))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The PEM bundle at `path` as extra roots for a reqwest client; errors name `field`.
pub fn reqwest_roots(path: &Path, field: &str) -> Result<Vec<reqwest::Certificate>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("{field} {}: {}", path.display(), e.kind()))?;
    reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|_| format!("{field} {}: not a PEM certificate bundle", path.display()))
}
