//! mTLS client identity: the names of a client certificate rustls has already verified against
//! `[server] client_ca` (chain, validity period, `clientAuth` extended key usage — an expired,
//! untrusted or wrong-usage certificate fails the handshake), carried from the connection to each
//! of its requests as the `PeerIdentity` extension, and mapped to a client by `cert_san_uri`
//! (e.g. a SPIFFE id) or `cert_san_dns`. Names are read with rustls-webpki (already in the tree).
//! The CA bundle is re-read when it changes (`tls::server`): a client certificate from a new CA
//! is accepted from the next handshake on.

use rustls_pki_types::CertificateDer;
use std::sync::Arc;

use crate::tls::TlsError;

/// The SAN URIs and DNS names of a connection's verified client certificate.
#[derive(Clone, Debug, Default)]
pub struct PeerIdentity {
    pub uris: Arc<[Arc<str>]>,
    pub dns: Arc<[Arc<str>]>,
}

impl PeerIdentity {
    /// From the end-entity certificate rustls verified; `None` if it cannot be parsed (it was
    /// parsed by the verifier, so that does not happen).
    pub fn from_cert(der: &CertificateDer<'_>) -> Option<Self> {
        let cert = webpki::EndEntityCert::try_from(der).ok()?;
        Some(Self {
            uris: cert.valid_uri_names().map(Arc::from).collect(),
            dns: cert.valid_dns_names().map(Arc::from).collect(),
        })
    }

    /// The identity of a finished server-side handshake, if the client presented a certificate.
    pub fn of(conn: &rustls::ServerConnection) -> Option<Self> {
        Self::from_cert(conn.peer_certificates()?.first()?)
    }
}

/// The client-certificate verifier for `[server] client_ca` (its certificates; `required`: no
/// anonymous clients). Rebuilt with the listener's TLS config when the CA file changes
/// (`tls::server`).
pub fn verifier(
    cas: Vec<CertificateDer<'static>>,
    required: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let bad = |e: &dyn std::fmt::Display| TlsError::new("server.client_ca", e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for c in cas {
        roots.add(c).map_err(|e| bad(&e))?;
    }
    let b = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        crate::tls::provider(),
    );
    let b = if required {
        b
    } else {
        b.allow_unauthenticated()
    };
    b.build().map_err(|e| bad(&e))
}
