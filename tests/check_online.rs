#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! `nimgate check --online` against a real OpenBao (`bao server -dev`, tests/common/openbao.rs)
//! and a key file: it logs in, reads the key once and says so by version and fingerprint (never
//! the key), or exits 69 with the cause. Vault TLS failures name the cause, against a real rustls
//! listener with a throwaway CA: unknown CA, https:// to a plain-HTTP server, http:// to a TLS
//! port, a CA file that is not PEM.

mod common;

use common::bin::run_bin;
use common::certs::self_signed;
use common::openbao::Bao;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};

const KEY: &str = "nvapi-check-online-key-0001";

/// A complete config with `secret` as its `[secret]` tables; the path of the file.
fn config(dir: &Path, secret: &str) -> PathBuf {
    let p = dir.join("nimgate.toml");
    std::fs::write(
        &p,
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n{secret}\n[[clients]]\nid = \"a\"\nkey_sha256 = \"{d}\"\n[audit]\npath = \"{a}\"\n",
            d = nimgate::auth::key_digest_hex(CLIENT_KEY),
            a = dir.join("audit.jsonl").display()
        ),
    )
    .unwrap();
    p
}

/// `check --online`: (exit code, stdout, stderr).
fn check_online(cfg: &Path) -> (Option<i32>, String, String) {
    let out = run_bin(&["check", "--online", "--config"], &[cfg]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn vault_secret(address: &str, path: &str, auth: &str) -> String {
    format!(
        "[secret]\nsource = \"vault\"\naddress = \"{address}\"\nmount = \"secret\"\npath = \"{path}\"\nfield = \"api_key\"\ntimeout = \"2s\"\n{auth}"
    )
}

#[tokio::test]
async fn check_online_reads_the_key_once_from_openbao_and_never_prints_it() {
    let Some(bao) = Bao::dev().await else { return };
    assert_eq!(bao.kv2_put("nim/prod", json!({"api_key": KEY})).await, 1);
    bao.policy(
        "nim-read",
        "path \"secret/data/nim/prod\" { capabilities = [\"read\"] }\n",
    )
    .await;
    let t = bao
        .token(json!({"policies": ["nim-read"], "ttl": "1h"}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{}\n", t.token)).unwrap();
    let auth = format!(
        "[secret.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n",
        dir.path().join("token").display()
    );
    let cfg = config(dir.path(), &vault_secret(&bao.addr, "nim/prod", &auth));
    let (code, out, err) = check_online(&cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!(
            "secret: vault {} (secret/nim/prod, field \"api_key\"): key read, version 1, fingerprint ",
            bao.addr
        )),
        "{out}"
    );
    for text in [&out, &err] {
        assert!(
            !text.contains(KEY) && !text.contains(&t.token),
            "secret printed: {text}"
        );
    }
    // The read really happened: OpenBao's audit log has it, by this token's accessor.
    assert!(
        bao.audit()
            .iter()
            .any(|r| r["request"]["path"] == "secret/data/nim/prod"
                && r["auth"]["accessor"] == t.accessor.as_str()),
        "no read of the secret in the OpenBao audit log"
    );
    // A path the policy does not allow: 69 and the cause.
    let cfg = config(dir.path(), &vault_secret(&bao.addr, "nim/other", &auth));
    let (code, out, err) = check_online(&cfg);
    assert_eq!(code, Some(69), "{out}{err}");
    assert!(err.contains("403 reading secret/nim/other"), "{err}");
    // A secret that does not exist (root token may read anything): 69, "not found".
    std::fs::write(dir.path().join("token"), bao.root_token()).unwrap();
    let (code, _, err) = check_online(&cfg);
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("not found (404)"), "{err}");
    // A server that is not there.
    let cfg = config(
        dir.path(),
        &vault_secret("http://127.0.0.1:9", "nim/prod", &auth),
    );
    let (code, _, err) = check_online(&cfg);
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("connection refused"), "{err}");
    // https:// to OpenBao's plain-HTTP listener.
    let https = bao.addr.replace("http://", "https://");
    let cfg = config(dir.path(), &vault_secret(&https, "nim/prod", &auth));
    let (code, _, err) = check_online(&cfg);
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("the server does not speak TLS"), "{err}");
}

#[test]
fn check_online_reads_a_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let secret = format!(
        "[secret]\nsource = \"file\"\npath = \"{}\"\n",
        key.display()
    );
    let cfg = config(dir.path(), &secret);
    let (code, out, err) = check_online(&cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("key read, version sha256:"), "{out}");
    assert!(!out.contains(KEY) && !err.contains(KEY));
    std::fs::write(&key, "").unwrap();
    let (code, _, err) = check_online(&cfg);
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains(&format!("secret: file {}", key.display())),
        "{err}"
    );
    // Without --online the same config passes: nothing is read.
    let out = run_bin(&["check", "--config"], &[&cfg]);
    assert!(out.status.success());
}

/// A TLS listener (leaf for localhost from a throwaway CA) that completes handshakes and then
/// closes; its port.
async fn tls_listener(cert: &Path, key: &Path) -> u16 {
    let acceptor = tokio_rustls::TlsAcceptor::from(nimgate::tls::server_config(cert, key).unwrap());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let a = acceptor.clone();
            tokio::spawn(async move {
                let _ = a.accept(s).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_tls_failures_name_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = self_signed(dir.path(), "vault");
    let port = tls_listener(&cert, &key).await;
    let token = dir.path().join("token");
    std::fs::write(&token, "s.not-a-real-token\n").unwrap();
    let auth = format!(
        "[secret.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n",
        token.display()
    );
    let run = |address: String, ca_file: Option<&Path>| {
        let mut secret = vault_secret(&address, "nim/prod", &auth);
        if let Some(ca) = ca_file {
            secret = secret.replace(
                "timeout = ",
                &format!("ca_file = \"{}\"\ntimeout = ", ca.display()),
            );
        }
        let cfg = config(dir.path(), &secret);
        tokio::task::block_in_place(|| check_online(&cfg))
    };
    // No ca_file: the throwaway CA is unknown.
    let (code, _, err) = run(format!("https://localhost:{port}"), None);
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains("certificate is signed by an unknown CA (set secret.ca_file"),
        "{err}"
    );
    // With it, TLS succeeds: whatever fails next is not a TLS error.
    let (code, _, err) = run(format!("https://localhost:{port}"), Some(&ca));
    assert_eq!(code, Some(69), "{err}");
    assert!(!err.contains("TLS"), "{err}");
    // http:// to the TLS port.
    let (code, _, err) = run(format!("http://localhost:{port}"), None);
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains("if the server speaks TLS, secret.address must start with https://"),
        "{err}"
    );
    // A ca_file that is not PEM: `check` refuses it before going online (64, naming it).
    let bad = dir.path().join("bad-ca.pem");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let (code, _, err) = run(format!("https://localhost:{port}"), Some(&bad));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("secret.ca_file"), "{err}");
}
