#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Secret hygiene of the built binary: with RUST_LOG=trace, drive success, 401, upstream 5xx,
//! Vault failure, rotation, renewal and NIM-401 refresh, then assert that no secret string (NIM
//! keys, client key, AppRole secret-id and role-id, Vault tokens) appears in stdout, stderr, the
//! audit file, /metrics, or /proc/<pid>/environ and cmdline.

mod common;

use common::bin::*;
use common::fake_vault::{FakeVault, Fault};
use common::*;
use serde_json::json;
use std::time::Duration;

const K2: &str = "nvapi-rotated-key-0002";
const SECRET_ID: &str = "approle-secret-id-7f3a9c";
const ROLE_ID: &str = "approle-role-id-51be02";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_audit_metrics_or_proc_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let fv = FakeVault::start().await;
    fv.put_kv2("secret", "nim/prod", json!({"api_key": NIM_KEY}));
    // Short TTL so renewals and logins happen during the run.
    fv.add_approle(
        "approle",
        ROLE_ID,
        SECRET_ID,
        Duration::from_secs(2),
        Duration::from_secs(4),
        true,
    );
    std::fs::write(dir.path().join("role-id"), ROLE_ID).unwrap();
    std::fs::write(dir.path().join("secret-id"), SECRET_ID).unwrap();
    let (nim, nim_addr) = fake_nim(vec![NIM_KEY.into(), K2.into()], Duration::from_millis(5)).await;
    let audit = dir.path().join("audit.jsonl");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstream]
url = "http://{nim_addr}"
[secret]
source = "vault"
address = "{vault}"
path = "nim/prod"
field = "api_key"
refresh = "300ms"
max_staleness = "30s"
timeout = "1s"
[secret.auth]
method = "approle"
role_id_file = "{d}/role-id"
secret_id_file = "{d}/secret-id"
[[clients]]
id = "team-a"
key_sha256 = "{digest}"
[audit]
path = "{audit}"
"#,
            vault = fv.url(),
            d = dir.path().display(),
            digest = nimgate::auth::key_digest_hex(CLIENT_KEY),
            audit = audit.display()
        ),
    )
    .unwrap();
    // Both listeners on port 0; the bound addresses come back in the "serving" log line.
    let mut p = spawn_serve(&cfg, Some("trace"));
    let pid = p.child.id();
    let admin = p.admin;
    let mut ready = false;
    for _ in 0..250 {
        if get_admin(admin, "/readyz").await.map(|r| r.0) == Ok(200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready);
    let url = format!("http://{}/v1/chat/completions", p.gw);
    let chat = |key: &'static str, extra: Option<(&'static str, &'static str)>, stream: bool| {
        let url = url.clone();
        async move {
            let mut r = post(&url, Some(key), &chat_body(stream));
            if let Some((h, v)) = extra {
                r.headers_mut().insert(h, v.parse().unwrap());
            }
            send(r).await.0
        }
    };
    assert_eq!(chat(CLIENT_KEY, None, false).await, 200);
    assert_eq!(chat(CLIENT_KEY, None, true).await, 200);
    assert_eq!(chat("ngk_wrong_key", None, false).await, 401);
    assert_eq!(
        chat(CLIENT_KEY, Some(("x-fake-status", "500")), false).await,
        500
    );
    assert_eq!(
        chat(
            CLIENT_KEY,
            Some(("x-api-key", "client-side-secret-abc")),
            false
        )
        .await,
        200
    );
    // Vault failure for a while, then back.
    fv.set_fault(Fault::Status503);
    tokio::time::sleep(Duration::from_millis(700)).await;
    fv.set_fault(Fault::None);
    // Rotation, and a NIM that rejects the old key (refresh + retry path).
    fv.put_kv2("secret", "nim/prod", json!({"api_key": K2}));
    nim.set_keys(vec![K2.into()]);
    assert_eq!(chat(CLIENT_KEY, None, false).await, 200);
    // Let renewals and a re-login near max TTL happen.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(chat(CLIENT_KEY, None, false).await, 200);
    let (_, metrics) = get_admin(admin, "/metrics").await.unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    kill_pid(pid, "-TERM");
    let (_, stdout, stderr) = p.finish();
    let audit_text = std::fs::read_to_string(&audit).unwrap();

    assert!(
        fv.count("login") >= 2 && fv.count("renew") >= 1,
        "renewal paths not exercised"
    );
    assert!(
        stderr.contains("TRACE") || stderr.contains("DEBUG"),
        "trace logging was not on"
    );
    let mut secrets: Vec<String> = vec![
        NIM_KEY.into(),
        K2.into(),
        CLIENT_KEY.into(),
        SECRET_ID.into(),
        ROLE_ID.into(),
        "client-side-secret-abc".into(),
    ];
    secrets.extend(fv.tokens_issued());
    assert!(fv.tokens_issued().len() >= 2);
    let places = [
        ("stdout", stdout.as_bytes().to_vec()),
        ("stderr", stderr.as_bytes().to_vec()),
        ("audit", audit_text.as_bytes().to_vec()),
        ("metrics", metrics.as_bytes().to_vec()),
        ("environ", environ),
        ("cmdline", cmdline),
    ];
    for s in &secrets {
        for (name, text) in &places {
            let hay = String::from_utf8_lossy(text);
            assert!(!hay.contains(s.as_str()), "secret {s:?} found in {name}");
        }
    }
    // The NIM really got the keys (the test would be vacuous otherwise).
    assert!(nim
        .seen()
        .iter()
        .any(|s| s.headers["authorization"] == format!("Bearer {K2}").as_str()));
}
