//! The client listener's TLS: a rustls `ServerConfig` (the serving pair, ALPN h2 + http/1.1, and
//! with `[server] client_ca` the client-certificate verifier) behind one `ArcSwap`, loaded once
//! per accepted connection (`acceptor`) and rebuilt whole when `tls_cert`, `tls_key` or
//! `client_ca` change (`watch`). A connection keeps the config it started with, so open
//! connections and streams are untouched by a rotation.
//!
//! Why a swapped config rather than a `ResolvesServerCert` over a swapped `CertifiedKey`: both
//! cost one `ArcSwap` load (and one `Arc` count) per handshake, but only the config also carries
//! the client-CA verifier — a swapped verifier would be a second load per handshake, and
//! `ClientCertVerifier::root_hint_subjects` returns a borrow that cannot outlive a load. A rebuilt
//! config also has a fresh session cache, so a session made under a client CA that was rotated
//! out cannot be resumed (clients make one full handshake after a rotation).

use std::sync::Arc;
use std::time::SystemTime;

use super::watch::{Contents, Reloading, Summary, Watch};
use super::TlsError;

/// The listener's reloading TLS config (cloned per connection: one `Arc`).
#[derive(Clone)]
pub struct ServerTls(Arc<Reloading<rustls::ServerConfig>>);

impl ServerTls {
    /// From `[server]`: `None` without `tls_cert`/`tls_key`; reads and checks the files now
    /// (an error stops the start) and, inside a runtime, polls them every `tls_reload_interval`.
    pub fn start(s: &crate::config::ServerConfig) -> Result<Option<Self>, TlsError> {
        let Some(w) = watch(s) else {
            return Ok(None);
        };
        w.start("server", s.tls_reload_interval)
            .map(|r| Some(Self(r)))
    }

    /// What `start` would refuse, without keeping anything (`nimgate check`).
    pub fn check(s: &crate::config::ServerConfig) -> Result<(), TlsError> {
        watch(s).map_or(Ok(()), |w| w.check())
    }

    /// A TLS acceptor with the current config: the one `ArcSwap` load of a handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.0.current.load_full())
    }

    pub fn stats(&self) -> &super::ReloadStats {
        &self.0.stats
    }
}

/// The listener's files: `tls_cert`, `tls_key`, then `client_ca` if set.
fn watch(s: &crate::config::ServerConfig) -> Option<Watch<rustls::ServerConfig>> {
    let (cert, key) = (s.tls_cert.clone()?, s.tls_key.clone()?);
    let mut files = vec![
        ("server.tls_cert".to_string(), cert),
        ("server.tls_key".to_string(), key),
    ];
    let required = s.client_ca_mode().is_some_and(|(_, r)| r);
    if let Some(ca) = &s.client_ca {
        files.push(("server.client_ca".into(), ca.clone()));
    }
    Some(Watch {
        files,
        build: Box::new(move |c, now| build(c, required, now)),
    })
}

/// The server config from `[cert, key]` or `[cert, key, client_ca]` contents.
pub(super) fn build(
    files: &Contents,
    required: bool,
    now: SystemTime,
) -> Result<(rustls::ServerConfig, Summary), TlsError> {
    let (ck, leaf) = super::certified_key(
        &files[0],
        &files[1],
        ("server.tls_cert", "server.tls_key"),
        now,
    )?;
    let b = rustls::ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("server.tls_cert", e.to_string()))?;
    let (b, text) = match files.get(2) {
        Some(ca) => {
            let cas = super::parse_certs(ca, "server.client_ca")?;
            let text = format!("{leaf}; client CA bundle of {}", cas.len());
            let v = crate::auth::mtls::verifier(cas, required)?;
            (b.with_client_cert_verifier(v), text)
        }
        None => (b.with_no_client_auth(), leaf.to_string()),
    };
    let mut c = b.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck)));
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((
        c,
        Summary {
            text,
            insecure: false,
        },
    ))
}
