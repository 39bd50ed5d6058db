#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! TLS on both sides: the client listener with a certificate (ALPN h2 and http/1.1), an https
//! upstream trusted through `upstream.ca_file`, and an untrusted upstream certificate → 502 with
//! the key never sent.

mod common;

use common::certs::self_signed;
use common::*;
use http_body_util::BodyExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A fake NIM behind TLS; counts completed handshakes.
async fn tls_nim(
    cert: &Path,
    key: &Path,
) -> (
    std::net::SocketAddr,
    Arc<nimgate::fakenim::FakeNim>,
    Arc<AtomicU64>,
) {
    let cfg = nimgate::tls::server_config(cert, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let nim = nimgate::fakenim::FakeNim::new(vec![NIM_KEY.into()], std::time::Duration::ZERO, true);
    let handshakes = Arc::new(AtomicU64::new(0));
    let (n2, h2) = (nim.clone(), handshakes.clone());
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let (acceptor, nim, hs) = (acceptor.clone(), n2.clone(), h2.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    hs.fetch_add(1, Ordering::Relaxed);
                    nim.serve_conn(tls).await;
                }
            });
        }
    });
    (addr, nim, handshakes)
}

/// A gateway whose upstream is a TLS fake NIM with a leaf certificate from a throwaway CA
/// named `name`; with `trust_ca` the gateway trusts that CA through `upstream.ca_file`.
/// (gateway, NIM, completed handshakes, the certificate dir).
async fn gateway_to_tls_nim(
    name: &str,
    trust_ca: bool,
) -> (
    Gateway,
    Arc<nimgate::fakenim::FakeNim>,
    Arc<AtomicU64>,
    tempfile::TempDir,
) {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = self_signed(certs.path(), name);
    let (addr, nim, hs) = tls_nim(&cert, &key).await;
    let mut opts = Opts::default().upstream_url(format!("https://localhost:{}", addr.port()));
    if trust_ca {
        opts = opts.upstream(format!("ca_file = \"{}\"", ca.display()));
    }
    (start_with(opts).await, nim, hs, certs)
}

fn https_client(
    ca: &Path,
    h2: bool,
) -> hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
> {
    let mut roots = rustls::RootCertStore::empty();
    for c in nimgate::tls::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only();
    let conn = if h2 {
        b.enable_http2().build()
    } else {
        b.enable_http1().build()
    };
    let mut cb = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    if h2 {
        cb.http2_only(true);
    }
    cb.build(conn)
}

#[tokio::test]
async fn tls_listener_serves_http1_and_h2_via_alpn() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = self_signed(certs.path(), "gw");
    let gw = start_with(Opts::default().server(format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert.display(),
        key.display()
    )))
    .await;
    for h2 in [false, true] {
        let url = format!("https://localhost:{}/v1/chat/completions", gw.addr.port());
        let resp = https_client(&ca, h2)
            .request(post(&url, Some(CLIENT_KEY), &chat_body(false)))
            .await
            .unwrap();
        assert_eq!(
            resp.version(),
            if h2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
        assert_eq!(resp.status(), 200);
        let _ = resp.into_body().collect().await;
    }
    assert_eq!(gw.nim.seen().len(), 2);
    // Plain HTTP on the TLS port gets nowhere.
    assert!(client()
        .request(get(&gw.url("/v1/models"), Some(CLIENT_KEY)))
        .await
        .is_err());
    gw.stop().await;
}

#[tokio::test]
async fn https_upstream_trusted_by_ca_file() {
    let (gw, nim, hs, _certs) = gateway_to_tls_nim("nim", true).await;
    let (s, v) = gw.chat().await;
    assert_eq!(s, 200, "{v}");
    assert!(hs.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        nim.seen()[0].headers["authorization"],
        format!("Bearer {NIM_KEY}").as_str()
    );
    gw.stop().await;
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_502_and_the_key_never_leaves() {
    let (gw, nim, hs, _certs) = gateway_to_tls_nim("evil", false).await;
    let (s, v) = gw.chat().await;
    assert_eq!(s, 502, "{v}");
    assert_eq!(error_code(&v), "upstream_unreachable");
    assert_eq!(hs.load(Ordering::Relaxed), 0, "handshake must fail");
    assert_eq!(
        nim.requests.load(Ordering::Relaxed),
        0,
        "no request, so no key, reached the server"
    );
    gw.stop().await;
}
