#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! The Vault source against a real Vault-API server: RustyVault (`rvault`), started here on
//! loopback with a file backend, initialised and unsealed over its HTTP API. KV v1, AppRole and
//! token auth with TTL expiry; it has no `renew-self` (500), so renewal falls back to re-login.
//! Without `rvault` on PATH these tests are skipped, except under CI=true where they fail.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

struct RVault {
    child: Option<Child>,
    addr: String,
    unseal_key: String,
    root: String,
    _dir: tempfile::TempDir,
}

impl Drop for RVault {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rvault_bin() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<std::path::PathBuf> = std::env::split_paths(&path).collect();
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(std::path::Path::new(&h).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("rvault"))
        .find(|p| p.is_file())
}

/// `None` = skip (not in CI); panics in CI when rvault is missing.
fn require_rvault() -> Option<std::path::PathBuf> {
    match rvault_bin() {
        Some(p) => Some(p),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("rvault (RustyVault) is not installed: cargo install rusty_vault --locked")
        }
        None => {
            eprintln!("SKIP: rvault not on PATH (cargo install rusty_vault --locked)");
            None
        }
    }
}

/// A started, initialised and unsealed rvault, [`RVault::setup`] with `token_ttl`: (rvault,
/// its AppRole ids). `None` = skip (see [`require_rvault`]).
async fn started_rvault(token_ttl: &str) -> Option<(RVault, (String, String))> {
    let bin = require_rvault()?;
    let rv = RVault::start(&bin).await;
    let ids = rv.setup(token_ttl).await;
    Some((rv, ids))
}

async fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut b = Request::builder().method(method).uri(url);
    if let Some(t) = token {
        b = b.header("x-vault-token", t);
    }
    let body = body.map(|v| Bytes::from(v.to_string())).unwrap_or_default();
    match client().request(b.body(Full::new(body)).unwrap()).await {
        Ok(r) => {
            let s = r.status().as_u16();
            let b = r
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Drain rvault's log (so its pipe never fills) and return the address from the first
/// "listening on: <addr>" line (max 20 s); `None` if it never comes.
fn listening_on(log: std::process::ChildStderr) -> Option<std::net::SocketAddr> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(log);
        let mut line = Vec::new();
        while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line);
            if let Some(rest) = text.split("listening on: ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().and_then(|a| a.parse().ok()));
            }
            line.clear();
        }
    });
    rx.recv_timeout(Duration::from_secs(20)).ok().flatten()
}

impl RVault {
    async fn start(bin: &std::path::Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Port 0: the bound address is read back from actix's "listening on: <addr>" log line
        // (info level; rvault itself only logs the configured address).
        let hcl = dir.path().join("rvault.hcl");
        std::fs::write(
            &hcl,
            format!(
                "storage \"file\" {{\n  path = \"{d}/data\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:0\"\n  tls_disable = true\n}}\nlog_level = \"info\"\nwork_dir = \"{d}/work\"\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let mut child = Command::new(bin)
            .arg("server")
            .arg(format!("--config={}", hcl.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let bound = listening_on(child.stderr.take().unwrap());
        let Some(bound) = bound else {
            // Child::kill: this child's pid only.
            let _ = child.kill();
            let _ = child.wait();
            panic!("rvault logged no 'listening on' address");
        };
        let addr = format!("http://{bound}");
        let mut up = false;
        for _ in 0..500 {
            if call("GET", &format!("{addr}/v1/sys/init"), None, None)
                .await
                .0
                == 200
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(up, "rvault did not start");
        let (s, v) = call(
            "PUT",
            &format!("{addr}/v1/sys/init"),
            None,
            Some(json!({"secret_shares": 1, "secret_threshold": 1})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let unseal_key = v["keys"][0].as_str().unwrap().to_string();
        let root = v["root_token"].as_str().unwrap().to_string();
        let rv = Self {
            child: Some(child),
            addr,
            unseal_key,
            root,
            _dir: dir,
        };
        rv.unseal().await;
        rv
    }

    /// A 1 h token with the `nim-read` policy: (status, response).
    async fn create_token(&self) -> (u16, Value) {
        self.req(
            "POST",
            "auth/token/create",
            Some(json!({"policies": ["nim-read"], "ttl": "1h"})),
        )
        .await
    }

    fn url(&self, p: &str) -> String {
        format!("{}/v1/{p}", self.addr)
    }

    async fn req(&self, method: &str, p: &str, body: Option<Value>) -> (u16, Value) {
        call(method, &self.url(p), Some(&self.root), body).await
    }

    /// Unseal, working around rvault's restore bug (seal, wait, retry).
    async fn unseal(&self) {
        for _ in 0..3 {
            let (s, _) = call(
                "PUT",
                &self.url("sys/unseal"),
                None,
                Some(json!({"key": self.unseal_key})),
            )
            .await;
            if s == 200 {
                return;
            }
            call("PUT", &self.url("sys/seal"), None, None).await;
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        panic!("rvault unseal failed");
    }

    async fn seal(&self) {
        let (s, _) = call("PUT", &self.url("sys/seal"), None, None).await;
        assert_eq!(s, 204);
    }

    async fn write(&self, path: &str, key: &str) {
        let (s, v) = self.req("POST", path, Some(json!({"api_key": key}))).await;
        assert!(s == 204 || s == 200, "{s} {v}");
    }

    /// Mount KV v1 at kv/, AppRole with the given token TTL; returns (role_id, secret_id).
    async fn setup(&self, token_ttl: &str) -> (String, String) {
        let (s, v) = self
            .req("POST", "sys/mounts/kv", Some(json!({"type": "kv"})))
            .await;
        assert_eq!(s, 204, "{v}");
        self.write("kv/nim/prod", NIM_KEY).await;
        let (s, v) = self
            .req("POST", "sys/auth/approle", Some(json!({"type": "approle"})))
            .await;
        assert_eq!(s, 204, "{v}");
        let (s, v) = self
            .req("POST", "auth/approle/role/nim-gw", Some(json!({"token_policies": ["nim-read"], "token_ttl": token_ttl, "token_max_ttl": "1h"})))
            .await;
        assert_eq!(s, 204, "{v}");
        let (_, v) = self
            .req("GET", "auth/approle/role/nim-gw/role-id", None)
            .await;
        let role_id = v["data"]["role_id"].as_str().unwrap().to_string();
        let (_, v) = self
            .req("POST", "auth/approle/role/nim-gw/secret-id", None)
            .await;
        let secret_id = v["data"]["secret_id"].as_str().unwrap().to_string();
        (role_id, secret_id)
    }
}

fn approle_table(
    rv: &RVault,
    dir: &std::path::Path,
    ids: &(String, String),
    max_staleness: &str,
) -> String {
    std::fs::write(dir.join("role-id"), &ids.0).unwrap();
    std::fs::write(dir.join("secret-id"), &ids.1).unwrap();
    format!(
        "[secret]\nsource = \"vault\"\naddress = \"{}\"\nmount = \"kv\"\npath = \"nim/prod\"\nkv_version = 1\nfield = \"api_key\"\nrefresh = \"250ms\"\nmax_staleness = \"{max_staleness}\"\ntimeout = \"2s\"\n[secret.auth]\nmethod = \"approle\"\nrole_id_file = \"{d}/role-id\"\nsecret_id_file = \"{d}/secret-id\"\n",
        rv.addr,
        d = dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_kv1_rotation_and_token_expiry_under_traffic() {
    // 3 s login tokens: they expire several times during the run; rvault cannot renew-self.
    let Some((rv, ids)) = started_rvault("3s").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gw =
        start_with(Opts::default().secret_table(approle_table(&rv, dir.path(), &ids, "30s"))).await;
    let k2 = "nvapi-rvault-rotated-2";
    gw.nim.set_keys(vec![NIM_KEY.into(), k2.into()]);
    let url = gw.url("/v1/chat/completions");
    let load = chat_load(
        url,
        usize::MAX,
        Duration::from_millis(20),
        Some(Duration::from_secs(8)),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    rv.write("kv/nim/prod", k2).await;
    let st = load.await.unwrap();
    assert!(st.len() > 100);
    assert!(
        st.iter().all(|s| *s == 200),
        "failed requests: {:?}",
        st.iter().filter(|s| **s != 200).count()
    );
    let seen: Vec<String> = gw
        .nim
        .seen()
        .iter()
        .map(|s| s.headers["authorization"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        seen.last().unwrap(),
        &format!("Bearer {k2}"),
        "rotated key in use"
    );
    let logins = gw.audit_events("vault_login").await;
    assert!(
        logins.len() >= 3,
        "tokens expire every 3 s: expected re-logins, got {}",
        logins.len()
    );
    let renews = gw.audit_events("vault_renew").await;
    assert!(
        renews.iter().any(|r| r["reason"] == "failure"),
        "renew-self is refused by rvault: {renews:?}"
    );
    let rot = gw.audit_events("secret_rotate").await;
    assert_eq!(rot.len(), 2);
    assert!(rot[1]["key_version"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_auth_and_revocation() {
    let Some((rv, _)) = started_rvault("1h").await else {
        return;
    };
    let (s, v) = rv.create_token().await;
    assert_eq!(s, 200, "{v}");
    let t1 = v["auth"]["client_token"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{t1}\n")).unwrap();
    let table = format!(
        "[secret]\nsource = \"vault\"\naddress = \"{}\"\nmount = \"kv\"\npath = \"nim/prod\"\nkv_version = 1\nfield = \"api_key\"\nrefresh = \"250ms\"\nmax_staleness = \"30s\"\n[secret.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n",
        rv.addr,
        dir.path().join("token").display()
    );
    let gw = start_with(Opts::default().secret_table(table)).await;
    assert_eq!(gw.chat().await.0, 200);
    // Revoke the token: reads get 403 → the key is evicted (a token file cannot log in again).
    let (s, _) = rv
        .req("POST", &format!("auth/token/revoke/{t1}"), None)
        .await;
    assert_eq!(s, 204);
    let mut evicted = false;
    for _ in 0..60 {
        if gw.chat().await.0 == 503 {
            evicted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(evicted, "a revoked token must stop key use");
    // The agent writes a fresh token: service resumes without restart.
    let (_, v) = rv.create_token().await;
    let t2 = v["auth"]["client_token"].as_str().unwrap().to_string();
    std::fs::write(dir.path().join("token"), format!("{t2}\n")).unwrap();
    gw.wait_ready().await;
    assert_eq!(gw.chat().await.0, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_vault_outage_short_and_long_and_startup() {
    let Some((rv, ids)) = started_rvault("1h").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Start while Vault is sealed: not ready until it is unsealed.
    rv.seal().await;
    let gw = start_with(
        Opts::default()
            .secret_table(approle_table(&rv, dir.path(), &ids, "2s"))
            .no_wait(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(get_admin(gw.admin, "/readyz").await.unwrap().0, 503);
    assert_eq!(gw.chat().await.0, 503);
    rv.unseal().await;
    gw.wait_ready().await;
    assert_eq!(gw.chat().await.0, 200);
    // Short outage (< max_staleness 2 s): still serving.
    rv.seal().await;
    for _ in 0..5 {
        assert_eq!(gw.chat().await.0, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rv.unseal().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gw.chat().await.0, 200);
    // Long outage (> max_staleness): fail closed, then recover without restart.
    rv.seal().await;
    tokio::time::sleep(Duration::from_millis(2800)).await;
    let (s, v) = gw.chat().await;
    assert_eq!(s, 503);
    assert_eq!(error_code(&v), "credential_unavailable");
    let n = gw.nim.requests.load(Ordering::Relaxed);
    rv.unseal().await;
    gw.wait_ready().await;
    assert_eq!(gw.chat().await.0, 200);
    assert_eq!(gw.nim.requests.load(Ordering::Relaxed), n + 1);
    let failures = gw.audit_events("secret_failure").await;
    assert!(!failures.is_empty());
    gw.stop().await;
}
