//! Throwaway certificates made with `openssl` (a CA and a localhost leaf it signs), for the TLS
//! tests of the client listener, the upstream and the Vault client.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// The certificates of the PEM files `ca` as a root store.
pub fn roots(ca: &[&Path]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for ca in ca {
        for c in nimgate::tls::load_certs(ca).unwrap() {
            roots.add(c).unwrap();
        }
    }
    roots
}

/// A rustls client config trusting the CAs in `ca`, presenting `client` (certificate, key) if
/// given; no ALPN.
pub fn client_tls(ca: &[&Path], client: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let b = rustls::ClientConfig::builder_with_provider(nimgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca));
    match client {
        Some((c, k)) => b
            .with_client_auth_cert(
                nimgate::tls::load_certs(c).unwrap(),
                rustls_pki_types::PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    }
}

/// A throwaway CA and a leaf certificate for localhost/127.0.0.1 signed by it:
/// (ca.crt, leaf.crt, leaf.key).
pub fn self_signed(
    dir: &Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let run = |args: Vec<String>| {
        let out = Command::new("openssl").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |p: std::path::PathBuf| p.display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ]
    .map(String::from);
    let mut a = vec!["req".into(), "-x509".into()];
    a.extend(ec.clone());
    a.extend(["-days", "1", "-subj", &format!("/CN={name}-test-ca")].map(String::from));
    a.extend([
        "-keyout".into(),
        s(p("ca.key")),
        "-out".into(),
        s(p("ca.crt")),
    ]);
    run(a);
    let mut a = vec!["req".into()];
    a.extend(ec);
    a.extend([
        "-subj".into(),
        "/CN=localhost".into(),
        "-keyout".into(),
        s(p("leaf.key")),
        "-out".into(),
        s(p("leaf.csr")),
    ]);
    run(a);
    std::fs::write(p("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    run(vec![
        "x509".into(),
        "-req".into(),
        "-in".into(),
        s(p("leaf.csr")),
        "-CA".into(),
        s(p("ca.crt")),
        "-CAkey".into(),
        s(p("ca.key")),
        "-CAcreateserial".into(),
        "-days".into(),
        "1".into(),
        "-extfile".into(),
        s(p("ext")),
        "-out".into(),
        s(p("leaf.crt")),
    ]);
    (p("ca.crt"), p("leaf.crt"), p("leaf.key"))
}

/// A client certificate for `cn` signed by the CA `self_signed(dir, ca)` made, with the
/// extensions `ext` (one per line, e.g. `subjectAltName=URI:spiffe://…`); `expired` dates it in
/// 2020: (leaf.crt, leaf.key).
pub fn client_cert(
    dir: &Path,
    ca: &str,
    cn: &str,
    ext: &str,
    expired: bool,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dates = if expired { EXPIRED } else { VALID };
    signed(dir, ca, cn, ext, "1000", dates)
}

/// Validity periods for `signed` (openssl's `YYYYMMDDHHMMSSZ`).
pub const VALID: (&str, &str) = ("20240101000000Z", "20991231000000Z");
pub const EXPIRED: (&str, &str) = ("20200101000000Z", "20200102000000Z");
pub const NOT_YET_VALID: (&str, &str) = ("20980101000000Z", "20991231000000Z");

/// The extensions of a serving certificate for localhost/127.0.0.1.
pub const SERVER_EXT: &str =
    "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth";

/// A certificate for `cn` with serial `serial` (hex) valid over `dates`, signed by the CA
/// `self_signed(dir, ca)` made, with the extensions `ext` (one per line). Made with `openssl ca`
/// (which, unlike `x509 -req`, can set past and future dates): (crt, key).
pub fn signed(
    dir: &Path,
    ca: &str,
    cn: &str,
    ext: &str,
    serial: &str,
    (start, end): (&str, &str),
) -> (std::path::PathBuf, std::path::PathBuf) {
    let p = |f: &str| dir.join(format!("{cn}-{f}"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |p: std::path::PathBuf| p.display().to_string();
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        &s(p("key")),
        "-out",
        &s(p("csr")),
    ]);
    std::fs::write(p("index.txt"), "").unwrap();
    std::fs::write(p("serial"), format!("{serial}\n")).unwrap();
    std::fs::write(
        p("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {}\nnew_certs_dir = {}\nserial = {}\ndefault_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n",
            s(p("index.txt")),
            dir.display(),
            s(p("serial"))
        ),
    )
    .unwrap();
    std::fs::write(p("ext"), format!("basicConstraints=CA:FALSE\n{ext}\n")).unwrap();
    let ca_dir = |f: &str| s(dir.join(format!("{ca}-{f}")));
    run(&[
        "ca",
        "-batch",
        "-notext",
        "-config",
        &s(p("ca.cnf")),
        "-cert",
        &ca_dir("ca.crt"),
        "-keyfile",
        &ca_dir("ca.key"),
        "-in",
        &s(p("csr")),
        "-out",
        &s(p("crt")),
        "-extfile",
        &s(p("ext")),
        "-startdate",
        start,
        "-enddate",
        end,
    ]);
    (p("crt"), p("key"))
}
