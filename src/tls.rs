//! PEM loading and the server-side rustls config (ALPN h2 + http/1.1).

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
