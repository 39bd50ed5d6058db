//! One upstream's outbound TLS: a rustls `ClientConfig` — the system roots plus `ca_file` (or,
//! only with an explicit `insecure_skip_verify = true`, no verification: `insecure`), the
//! `client_cert`/`client_key` pair for NIMs that require client certificates, ALPN `h2` when
//! `http2` — behind one `ArcSwap` shared by the upstream's replicas and rebuilt whole when a file
//! changes (`watch`). The connector (`proxy::client::Connector`) loads it once per new
//! connection; pooled connections keep the session they made. SNI is the URL's host (none for an
//! IP address, as RFC 6066 says), the name the certificate is verified against.
//!
//! A config rebuilt as a whole (not a `ResolvesClientCert` beside a swapped verifier) keeps the
//! roots and the client certificate of one connection from one moment, and costs one load per
//! connection rather than one per callback.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::watch::{Contents, Reloading, Summary, Watch};
use super::TlsError;
use crate::config::UpstreamConfig;

/// An upstream's reloading client config.
#[derive(Clone)]
pub struct UpstreamTls(Arc<Reloading<rustls::ClientConfig>>);

/// Which files an upstream's config is built from (each present one is read, in this order).
#[derive(Clone)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one per independent TOML setting"
)]
struct Spec {
    prefix: String,
    ca: bool,
    client_cert: bool,
    insecure: bool,
    http2: bool,
}

impl UpstreamTls {
    /// The config of upstream `name` (`prefix`: its field names, `upstream` or `upstreams[i]`):
    /// files read and checked now (an error stops the start), then polled every `interval`
    /// inside a runtime.
    pub fn start(
        name: &str,
        prefix: &str,
        cfg: &UpstreamConfig,
        interval: std::time::Duration,
    ) -> Result<Self, TlsError> {
        watch(prefix, cfg)
            .start(&format!("upstream:{name}"), interval)
            .map(Self)
    }

    /// What `start` would refuse, without keeping anything (`nimgate check`).
    pub fn check(prefix: &str, cfg: &UpstreamConfig) -> Result<(), TlsError> {
        watch(prefix, cfg).check()
    }

    /// The current config: the one `ArcSwap` load of a new upstream connection.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.0.current.load_full()
    }

    pub fn stats(&self) -> &super::ReloadStats {
        &self.0.stats
    }
}

fn watch(prefix: &str, cfg: &UpstreamConfig) -> Watch<rustls::ClientConfig> {
    let f = |k: &str| format!("{prefix}.{k}");
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    if let Some(ca) = &cfg.ca_file {
        files.push((f("ca_file"), ca.clone()));
    }
    let pair = cfg.client_cert.clone().zip(cfg.client_key.clone());
    if let Some((cert, key)) = &pair {
        files.push((f("client_cert"), cert.clone()));
        files.push((f("client_key"), key.clone()));
    }
    let spec = Spec {
        prefix: prefix.to_string(),
        ca: cfg.ca_file.is_some(),
        client_cert: pair.is_some(),
        insecure: cfg.insecure_skip_verify,
        http2: cfg.http2,
    };
    Watch {
        files,
        build: Box::new(move |c, now| build(&spec, c, now)),
    }
}

fn build(
    spec: &Spec,
    files: &Contents,
    now: SystemTime,
) -> Result<(rustls::ClientConfig, Summary), TlsError> {
    let f = |k: &str| format!("{}.{k}", spec.prefix);
    let mut files = files.iter();
    let mut text = Vec::new();
    let b = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new(&spec.prefix, e.to_string()))?;
    // `ca_file` comes first when set (validation refuses it beside `insecure_skip_verify`).
    let ca = if spec.ca { files.next() } else { None };
    let b = if spec.insecure {
        text.push("certificate verification off".to_string());
        b.dangerous()
            .with_custom_certificate_verifier(Arc::new(
                super::insecure::NoVerify(super::provider()),
            ))
    } else {
        let mut roots = super::system_roots().clone();
        if let Some(ca) = ca {
            let field = f("ca_file");
            let cas = super::parse_certs(ca, &field)?;
            text.push(format!("ca_file bundle of {}", cas.len()));
            for c in cas {
                roots
                    .add(c)
                    .map_err(|e| TlsError::new(&field, e.to_string()))?;
            }
        }
        b.with_root_certificates(roots)
    };
    let mut c = match (spec.client_cert, files.next(), files.next()) {
        (true, Some(cert), Some(key)) => {
            let fields = (f("client_cert"), f("client_key"));
            let (ck, leaf) = super::certified_key(cert, key, (&fields.0, &fields.1), now)?;
            text.push(format!("client certificate {leaf}"));
            b.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck)))
        }
        _ => b.with_no_client_auth(),
    };
    // As hyper-rustls' builder sets it: h2 only with `http2`, else no ALPN.
    c.alpn_protocols = if spec.http2 {
        vec![b"h2".to_vec()]
    } else {
        Vec::new()
    };
    Ok((
        c,
        Summary {
            text: text.join("; "),
            insecure: spec.insecure,
        },
    ))
}
