//! mTLS client identity: the names of a client certificate rustls has already verified against
//! `[server] client_ca` (chain, validity period, `clientAuth` extended key usage — an expired,
//! untrusted or wrong-usage certificate fails the handshake), carried from the connection to each
//! of its requests as the `PeerIdentity` extension, and mapped to a client by `cert_san_uri`
//! (e.g. a SPIFFE id), `cert_san_dns` or `cert_subject_cn`. SANs are read with rustls-webpki
//! (already in the tree); it hands out the subject only as raw DER, so `subject_cn` walks that
//! `Name` itself (a few lines of TLV reading rather than an X.509 crate for one attribute).
//! The CA bundle is re-read when it changes (`tls::server`): a client certificate from a new CA
//! is accepted from the next handshake on.

use rustls_pki_types::CertificateDer;
use std::sync::Arc;

use crate::tls::TlsError;

/// The SAN URIs and DNS names of a connection's verified client certificate, and its subject
/// common name (`None` when it has none, or more than one: an ambiguous CN maps to nobody).
#[derive(Clone, Debug, Default)]
pub struct PeerIdentity {
    pub uris: Arc<[Arc<str>]>,
    pub dns: Arc<[Arc<str>]>,
    pub cn: Option<Arc<str>>,
}

impl PeerIdentity {
    /// From the end-entity certificate rustls verified; `None` if it cannot be parsed (it was
    /// parsed by the verifier, so that does not happen).
    pub fn from_cert(der: &CertificateDer<'_>) -> Option<Self> {
        let cert = webpki::EndEntityCert::try_from(der).ok()?;
        Some(Self {
            uris: cert.valid_uri_names().map(Arc::from).collect(),
            dns: cert.valid_dns_names().map(Arc::from).collect(),
            cn: subject_cn(cert.subject()).map(Arc::from),
        })
    }

    /// The identity of a finished server-side handshake, if the client presented a certificate.
    pub fn of(conn: &rustls::ServerConnection) -> Option<Self> {
        Self::from_cert(conn.peer_certificates()?.first()?)
    }
}

/// DER tag of `commonName`'s OID, 2.5.4.3.
const OID_CN: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];

/// One DER TLV from the front of `b`: (tag, contents, rest). Definite lengths up to 4 bytes.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let (num, rest) = b.split_at(n);
        b = rest;
        num.iter()
            .fold(0usize, |acc, &d| (acc << 8) | usize::from(d))
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// The `commonName` of a certificate subject (the contents of its `Name` SEQUENCE, as webpki's
/// `subject()` gives them): a UTF8String, PrintableString or IA5String. `None` if there is no
/// CN, more than one, another string type, or the DER does not parse.
pub fn subject_cn(mut name: &[u8]) -> Option<&str> {
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const STRINGS: [u8; 3] = [0x0c, 0x13, 0x16];
    let mut found = None;
    while !name.is_empty() {
        let (tag, mut rdn, rest) = tlv(name)?;
        name = rest;
        if tag != SET {
            return None;
        }
        while !rdn.is_empty() {
            let (tag, attr, rest) = tlv(rdn)?;
            rdn = rest;
            if tag != SEQUENCE {
                return None;
            }
            let Some(value) = attr.strip_prefix(OID_CN) else {
                continue;
            };
            let (tag, text, _) = tlv(value)?;
            if found.is_some() || !STRINGS.contains(&tag) {
                return None;
            }
            found = Some(std::str::from_utf8(text).ok()?);
        }
    }
    found
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

#[cfg(test)]
mod tests {
    use super::subject_cn;

    /// A `Name` of RDNs, each one `(oid, string tag, value)` attribute.
    fn name(attrs: &[(&[u8], u8, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (oid, tag, v) in attrs {
            let mut attr = oid.to_vec();
            attr.extend([*tag, v.len() as u8]);
            attr.extend(v.as_bytes());
            let mut seq = vec![0x30, attr.len() as u8];
            seq.extend(attr);
            out.extend([0x31, seq.len() as u8]);
            out.extend(seq);
        }
        out
    }

    const O: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x0a];
    const CN: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];

    #[test]
    fn the_one_common_name_is_found_beside_other_attributes() {
        let n = name(&[(O, 0x0c, "Example"), (CN, 0x0c, "batch.team-m")]);
        assert_eq!(subject_cn(&n), Some("batch.team-m"));
        assert_eq!(subject_cn(&name(&[(CN, 0x13, "app")])), Some("app"));
    }

    #[test]
    fn no_cn_two_cns_odd_strings_and_bad_der_map_to_none() {
        assert_eq!(subject_cn(&name(&[(O, 0x0c, "Example")])), None);
        assert_eq!(subject_cn(&name(&[(CN, 0x0c, "a"), (CN, 0x0c, "b")])), None);
        // BMPString: not read.
        assert_eq!(subject_cn(&name(&[(CN, 0x1e, "ab")])), None);
        let mut n = name(&[(CN, 0x0c, "app")]);
        n.truncate(n.len() - 1);
        assert_eq!(subject_cn(&n), None);
    }
}
