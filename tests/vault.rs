#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Vault secret source against the fault-injecting fake Vault (HashiCorp's documented JSON), for
//! what a real server cannot be made to do on demand: KV v2 answers without `metadata`, a refused
//! renewal of a still-valid token, slow answers and 503 bursts, a value stored with a trailing
//! newline. Everything a real server does is tested against OpenBao in `tests/openbao.rs`.

mod common;

use common::fake_vault::{FakeVault, Fault};
use common::*;
use http::header;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const K2: &str = "nvapi-test-key-0002";
/// Token TTL and max TTL unless a test needs them short.
const TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(600);

/// A fake Vault holding `secret` at KV v2 `secret/nim/prod`, and a temp dir for credential files.
async fn vault_with(secret: serde_json::Value) -> (Arc<FakeVault>, tempfile::TempDir) {
    let fv = FakeVault::start().await;
    let dir = tempfile::tempdir().unwrap();
    fv.put_kv2("secret", "nim/prod", secret);
    (fv, dir)
}

/// [`vault_with`] the NIM key as `api_key`.
async fn vault_with_key() -> (Arc<FakeVault>, tempfile::TempDir) {
    vault_with(json!({"api_key": NIM_KEY})).await
}

/// (Re-)define the AppRole `role-1` / `secret-id-1` with these token TTLs (renewable).
fn add_role(fv: &FakeVault, ttl: Duration, max_ttl: Duration) {
    fv.add_approle("approle", "role-1", "secret-id-1", ttl, max_ttl, true);
}

struct VaultSetup {
    table: String,
}

fn approle(fv: &FakeVault, dir: &std::path::Path, extra: &str) -> VaultSetup {
    add_role(fv, TTL, MAX_TTL);
    std::fs::write(dir.join("role-id"), "role-1\n").unwrap();
    std::fs::write(dir.join("secret-id"), "secret-id-1\n").unwrap();
    VaultSetup {
        table: format!(
            r#"[secret]
source = "vault"
address = "{url}"
mount = "secret"
path = "nim/prod"
kv_version = 2
field = "api_key"
refresh = "200ms"
max_staleness = "5s"
timeout = "1s"
{extra}
[secret.auth]
method = "approle"
role_id_file = "{d}/role-id"
secret_id_file = "{d}/secret-id"
"#,
            url = fv.url(),
            d = dir.display()
        ),
    }
}

/// Write `contents` to `dir/name`, then start a gateway reading `secret/nim/prod` (KV v2 by
/// default) with `auth` plus `<file_key> = "<that file>"` as its `[secret.auth]` keys.
/// (the gateway, the file's path)
async fn file_auth_gateway(
    fv: &FakeVault,
    dir: &tempfile::TempDir,
    auth: &str,
    (file_key, name, contents): (&str, &str, &str),
) -> (Gateway, std::path::PathBuf) {
    let file = dir.path().join(name);
    std::fs::write(&file, contents).unwrap();
    let gw = gateway(format!(
        "[secret]\nsource = \"vault\"\naddress = \"{}\"\npath = \"nim/prod\"\nfield = \"api_key\"\nrefresh = \"200ms\"\nmax_staleness = \"30s\"\n[secret.auth]\n{auth}{file_key} = \"{}\"\n",
        fv.url(),
        file.display()
    ))
    .await;
    (gw, file)
}

/// [`approle_vault`] with the default timing, and a gateway reading it.
async fn approle_gateway() -> (Arc<FakeVault>, tempfile::TempDir, Gateway) {
    let (fv, dir, v) = approle_vault("").await;
    let gw = gateway(v.table).await;
    (fv, dir, gw)
}

/// [`vault_with_key`] and [`approle`] auth (`extra` in its `[secret]` table).
async fn approle_vault(extra: &str) -> (Arc<FakeVault>, tempfile::TempDir, VaultSetup) {
    let (fv, dir) = vault_with_key().await;
    let v = approle(&fv, dir.path(), extra);
    (fv, dir, v)
}

async fn gateway(table: String) -> Gateway {
    start_with(Opts::default().secret_table(table)).await
}

fn keys_seen(gw: &Gateway) -> Vec<String> {
    gw.nim
        .seen()
        .iter()
        .map(|s| {
            s.headers[header::AUTHORIZATION]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn kv2_without_metadata_pinned_version_and_kv1() {
    let (fv, dir) = vault_with_key().await;
    fv.put_kv2("secret", "nim/prod", json!({"api_key": K2}));
    // Pinned to version 1 although 2 exists.
    let v = approle(&fv, dir.path(), "version = 1");
    let gw = gateway(v.table).await;
    assert_eq!(gw.chat().await.0, 200);
    assert_eq!(keys_seen(&gw), vec![format!("Bearer {NIM_KEY}")]);
    assert_eq!(gw.audit_events("use").await[0]["key_version"], "1");
    assert!(fv.log().iter().any(|s| s.path.contains("version=1")));
    gw.stop().await;

    // Without metadata: the version is a content hash.
    fv.set_kv2_metadata(false);
    let v = approle(&fv, dir.path(), "");
    let gw = gateway(v.table).await;
    gw.nim.set_keys(vec![K2.into()]);
    assert_eq!(gw.chat().await.0, 200);
    let ver = gw.audit_events("use").await[0]["key_version"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ver.starts_with("sha256:"), "{ver}");
    gw.stop().await;

    // KV v1.
    fv.put_kv1("kv", "nim/v1", json!({"token": NIM_KEY}));
    let v = approle(&fv, dir.path(), "");
    let table = v
        .table
        .replace("mount = \"secret\"", "mount = \"kv\"")
        .replace("path = \"nim/prod\"", "path = \"nim/v1\"")
        .replace("kv_version = 2", "kv_version = 1")
        .replace("field = \"api_key\"", "field = \"token\"");
    let gw = gateway(table).await;
    assert_eq!(gw.chat().await.0, 200);
    assert_eq!(keys_seen(&gw), vec![format!("Bearer {NIM_KEY}")]);
    gw.stop().await;
}

#[tokio::test]
async fn refused_renewal_and_revoked_tokens_lead_to_a_new_login() {
    let (fv, _dir, v) = approle_vault("").await;
    add_role(&fv, Duration::from_secs(2), Duration::from_secs(600));
    fv.set_renew_refused(true);
    let gw = gateway(v.table).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(fv.count("renew") >= 1);
    assert!(
        fv.count("login") >= 2,
        "refused renewal must lead to a login"
    );
    let logins = fv.count("login");
    fv.revoke_all_tokens();
    let mut st = Vec::new();
    for _ in 0..10 {
        st.push(gw.chat().await.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert!(
        fv.count("login") > logins,
        "403 after revoke must lead to a login"
    );
    gw.stop().await;
}

#[tokio::test]
async fn outage_shorter_than_max_staleness_keeps_serving() {
    let (fv, _dir, gw) = approle_gateway().await;
    for fault in [
        Fault::Status503,
        Fault::Down,
        Fault::Delay(Duration::from_secs(3)),
    ] {
        fv.set_fault(fault);
        for _ in 0..10 {
            assert_eq!(gw.chat().await.0, 200, "during {fault:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(get_admin(gw.admin, "/readyz").await.unwrap().0, 200);
        fv.set_fault(Fault::None);
    }
    let (_, m) = get_admin(gw.admin, "/metrics").await.unwrap();
    assert!(m.contains("nimgate_secret_last_success_age_seconds"), "{m}");
    let failures = gw.audit_events("secret_failure").await;
    assert!(!failures.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn kubernetes_auth_rereads_the_jwt_at_each_login() {
    let (fv, dir) = vault_with_key().await;
    // The role accepts exactly this one JWT (calling again replaces the list).
    let accept_only =
        |jwt: &str| fv.add_k8s_role("kubernetes", "nimgate", &[jwt], TTL, MAX_TTL, true);
    accept_only("jwt-one");
    let auth = "method = \"kubernetes\"\nrole = \"nimgate\"\n";
    let (gw, jwt) = file_auth_gateway(&fv, &dir, auth, ("jwt_file", "jwt", "jwt-one")).await;
    assert_eq!(gw.chat().await.0, 200);
    // The projected token rotates; Vault now only accepts the new one; old Vault tokens die.
    std::fs::write(&jwt, "jwt-two").unwrap();
    accept_only("jwt-two");
    fv.revoke_all_tokens();
    let logins = fv.count("login");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(fv.count("login") > logins);
    let last_login = fv.last_seen("/login").unwrap();
    assert!(String::from_utf8_lossy(&last_login.body).contains("jwt-two"));
    assert_eq!(gw.chat().await.0, 200);
    gw.stop().await;
}

#[allow(dead_code)]
fn _assert_send(_: Arc<FakeVault>) {}

#[tokio::test]
async fn a_trailing_newline_in_the_vault_value_is_trimmed_as_from_a_file() {
    // `bao kv put secret/nim/prod api_key=-`, the key pasted and Ctrl-D: stored as `key\n`.
    let (fv, dir) = vault_with(json!({"api_key": format!("{NIM_KEY}\n")})).await;
    let v = approle(&fv, dir.path(), "");
    let gw = gateway(v.table).await;
    assert_eq!(gw.chat().await.0, 200);
    assert_eq!(keys_seen(&gw), vec![format!("Bearer {NIM_KEY}")]);
    gw.stop().await;
}
