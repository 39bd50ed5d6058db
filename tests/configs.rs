#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Every TOML config shipped in config/ and deploy/ parses and validates against the real schema
//! (so examples cannot drift from the code). `clients_file` is resolved against config/clients.toml.

use std::path::{Path, PathBuf};

fn nimgate_configs(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            nimgate_configs(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&p).unwrap();
            if text.contains("[upstream]") || text.contains("[[upstreams]]") {
                out.push(p);
            }
        }
    }
}

#[test]
fn shipped_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    nimgate_configs(&root.join("config"), &mut files);
    nimgate_configs(&root.join("deploy"), &mut files);
    assert!(files.len() >= 6, "{files:?}");
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("config/nimgate.multi.toml")),
        "{files:?}"
    );
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let mut cfg =
            nimgate::config::parse(&text).unwrap_or_else(|e| panic!("{}: {e:?}", f.display()));
        if cfg.auth.clients_file.is_some() {
            cfg.auth.clients_file = Some(root.join("config/clients.toml"));
            cfg.resolve_files().unwrap();
        }
        let errs = cfg.validate();
        assert!(errs.is_empty(), "{}: {errs:?}", f.display());
    }
}

#[test]
fn clients_files_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in [
        root.join("config/clients.toml"),
        root.join("deploy/kubernetes/base/config/clients.toml"),
    ] {
        if !f.exists() {
            continue;
        }
        let text = format!(
            "[upstream]\nurl = \"http://x:1\"\n[secret]\nsource = \"file\"\npath = \"/k\"\n[auth]\nclients_file = \"{}\"\n",
            f.display()
        );
        let mut cfg = nimgate::config::parse(&text).unwrap();
        cfg.resolve_files()
            .unwrap_or_else(|e| panic!("{}: {e:?}", f.display()));
        assert!(!cfg.clients.is_empty());
        assert!(
            cfg.validate().is_empty(),
            "{}: {:?}",
            f.display(),
            cfg.validate()
        );
    }
}

/// The first ```toml block of the README that contains `needle`.
fn readme_block(needle: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains(needle))
        .unwrap_or_else(|| panic!("a README toml block with {needle}"))
        .to_string()
}

/// The README's `[[auth.jwt]]` example parses and validates as written, and is the shipped
/// config/nimgate.jwt-kubernetes.toml (line for line).
#[test]
fn readme_jwt_example_is_valid_and_shipped() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("config/nimgate.jwt-kubernetes.toml")).unwrap();
    let block = readme_block("[[auth.jwt]]");
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            shipped.lines().any(|s| s == line),
            "not in the shipped config: {line}"
        );
    }
    let text = format!(
        "[upstream]\nurl = \"http://x:1\"\n[secret]\nsource = \"file\"\npath = \"/k\"\n{block}"
    );
    let cfg = nimgate::config::parse(&text).unwrap();
    assert_eq!(cfg.validate(), vec![]);
    assert_eq!(cfg.auth.jwt[0].audiences, ["nimgate"]);
}

/// The README's mTLS example parses and validates as written.
#[test]
fn readme_mtls_example_is_valid() {
    let block = readme_block("cert_san_uri");
    let text = format!(
        "[upstream]\nurl = \"http://x:1\"\n[secret]\nsource = \"file\"\npath = \"/k\"\n{block}"
    );
    let cfg = nimgate::config::parse(&text).unwrap();
    assert_eq!(cfg.validate(), vec![]);
    assert!(cfg
        .server
        .client_ca_mode()
        .is_some_and(|(_, required)| required));
}

/// The README's upstream mTLS example parses and validates as written.
#[test]
fn readme_upstream_mtls_example_is_valid() {
    let block = readme_block("client_cert");
    let text = format!(
        "{block}[secret]\nsource = \"file\"\npath = \"/k\"\n[[clients]]\nid = \"a\"\nkey_sha256 = \"{}\"\n",
        "a".repeat(64)
    );
    let cfg = nimgate::config::parse(&text).unwrap();
    assert_eq!(cfg.validate(), vec![]);
    let u = cfg.upstream.unwrap();
    assert!(u.client_cert.is_some() && u.client_key.is_some() && !u.insecure_skip_verify);
}
