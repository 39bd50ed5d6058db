#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Documentation pinned to the code: error codes, exit codes, the burst default and the module
//! layout the README describes must match what the code does.

use nimgate::error::{GatewayError, InitError};

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[test]
fn every_client_error_code_is_documented_with_its_status() {
    let text = readme().replace('\n', " ");
    for e in GatewayError::ALL {
        let entry = format!("{} `{}`", e.status_code().as_u16(), e.code());
        let listed = format!("`{}`", e.code());
        assert!(
            text.contains(&entry) || text.contains(&listed),
            "README.md does not document error code {entry}"
        );
    }
}

#[test]
fn exit_codes_are_documented() {
    let text = readme();
    let samples = [
        InitError::Config(String::new()),
        InitError::Software(String::new()),
        InitError::AuditIo {
            path: "x".into(),
            source: std::io::ErrorKind::NotFound.into(),
        },
        InitError::Bind {
            field: "server.listen",
            addr: ([127, 0, 0, 1], 1).into(),
            source: std::io::ErrorKind::AddrInUse.into(),
        },
    ];
    for e in samples {
        let code = format!("| {} |", e.exit_code());
        assert!(
            text.contains(&code),
            "README.md's exit code table lacks {code}"
        );
    }
}

#[test]
fn burst_default_is_the_documented_one() {
    // config/nimgate.toml says the default burst is `rpm`: with rpm = 6 and no burst, exactly
    // six requests pass at once.
    let cfg = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/nimgate.toml"))
        .unwrap();
    assert!(
        cfg.contains("(default: rpm)"),
        "config/nimgate.toml lost the burst default"
    );
    let reg = nimgate::auth::ClientRegistry::new(
        &[nimgate::config::ClientConfig {
            rpm: Some(6),
            ..nimgate::config::ClientConfig::keyed("a", nimgate::auth::key_digest_hex("k"))
        }],
        &[],
        1024,
    )
    .unwrap();
    let mut h = http::HeaderMap::new();
    h.insert("authorization", "Bearer k".parse().unwrap());
    let p = reg.authenticate(&h).unwrap();
    let limiter = p.0.limiter.as_ref().unwrap();
    let passed = (0..10).filter(|_| limiter.check().is_ok()).count();
    assert_eq!(passed, 6);
}

#[test]
fn no_source_file_is_over_400_lines() {
    fn walk(dir: &std::path::Path, out: &mut Vec<(String, usize)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let n = std::fs::read_to_string(&p).unwrap().lines().count();
                out.push((p.display().to_string(), n));
            }
        }
    }
    let mut files = Vec::new();
    walk(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut files,
    );
    let long: Vec<_> = files.iter().filter(|(_, n)| *n > 400).collect();
    assert!(long.is_empty(), "src files over 400 lines: {long:?}");
}
