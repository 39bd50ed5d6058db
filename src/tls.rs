//! PEM loading (rustls certificates and keys, reqwest extra roots), the server-side rustls
//! config (ALPN h2 + http/1.1), and the client-side config for outbound TLS (system roots plus an
//! optional CA bundle).

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificates found", path.display()));
    }
    Ok(certs)
}

pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    server_config_mtls(cert, key, None)
}

/// `server_config`, verifying client certificates against `client_ca` (`(path, required)`).
pub fn server_config_mtls(
    cert: &Path,
    key: &Path,
    client_ca: Option<(&Path, bool)>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let c = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?;
    let c = match client_ca {
        Some((ca, required)) => {
            c.with_client_cert_verifier(crate::auth::mtls::verifier(ca, required)?)
        }
        None => c.with_no_client_auth(),
    };
    let mut c = c
        .with_single_cert(certs, key)
        .map_err(|e| format!("server.tls_cert/tls_key: {e}"))?;
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// A client config trusting the system roots plus `ca_file` (errors name `field`).
pub fn client_config(ca_file: Option<&Path>, field: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(path) = ca_file {
        for cert in load_certs(path).map_err(|e| format!("{field}: {e}"))? {
            roots.add(cert).map_err(|e| format!("{field}: {e}"))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
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
