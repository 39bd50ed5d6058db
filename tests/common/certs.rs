//! Certificates from a throwaway test CA, made with the openssl CLI.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

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
