//! The checks a certificate chain and its private key pass before they are served (`[server]
//! tls_cert`/`tls_key`) or presented to an upstream (`client_cert`/`client_key`), at start and on
//! every reload: both parse, the key is the leaf's (rustls `CertifiedKey::keys_match`: the same
//! SubjectPublicKeyInfo), and the leaf is within its validity period now. Messages name the
//! field and never quote key material.

use rustls::sign::CertifiedKey;
use std::sync::Arc;
use std::time::SystemTime;

use super::TlsError;

/// What the logs say about a certificate that was loaded (public fields only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The serial number, hex.
    pub serial: String,
    pub not_after: SystemTime,
}

impl std::fmt::Display for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "serial {} valid until {}",
            self.serial,
            humantime::format_rfc3339_seconds(self.not_after)
        )
    }
}

/// The chain in `cert_pem` with the key in `key_pem`, checked as of `now`; `fields`: the
/// certificate's and the key's setting, for messages.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    (cert_field, key_field): (&str, &str),
    now: SystemTime,
) -> Result<(Arc<CertifiedKey>, Leaf), TlsError> {
    let chain = super::parse_certs(cert_pem, cert_field)?;
    let leaf = check_leaf(&chain[0], cert_field, now)?;
    let der = super::parse_key(key_pem, key_field)?;
    let key = super::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|_| {
            TlsError::new(
                key_field,
                "not a usable private key (RSA, ECDSA P-256/P-384 or Ed25519)",
            )
        })?;
    let ck = CertifiedKey::new(chain, key);
    ck.keys_match().map_err(|e| {
        TlsError::new(
            key_field,
            match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    format!("is not the key of the certificate in {cert_field}")
                }
                _ => format!("cannot be checked against the certificate in {cert_field}"),
            },
        )
    })?;
    Ok((Arc::new(ck), leaf))
}

/// The leaf parses as an X.509 certificate and `now` is within its validity period.
fn check_leaf(
    der: &rustls_pki_types::CertificateDer<'_>,
    field: &str,
    now: SystemTime,
) -> Result<Leaf, TlsError> {
    let cert = webpki::EndEntityCert::try_from(der)
        .map_err(|e| TlsError::new(field, format!("the first certificate does not parse: {e}")))?;
    let v = super::validity(der)
        .ok_or_else(|| TlsError::new(field, "the first certificate has no readable validity"))?;
    use humantime::format_rfc3339_seconds as at;
    if now < v.not_before {
        return Err(TlsError::new(
            field,
            format!(
                "the certificate is not valid yet (not before {})",
                at(v.not_before)
            ),
        ));
    }
    if now > v.not_after {
        return Err(TlsError::new(
            field,
            format!("the certificate expired at {}", at(v.not_after)),
        ));
    }
    Ok(Leaf {
        serial: hex::encode(cert.serial()),
        not_after: v.not_after,
    })
}
