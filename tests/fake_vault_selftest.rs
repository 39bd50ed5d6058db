#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Self-test of the fake Vault server used by the integration tests: every feature is
//! exercised over a real loopback socket with a plain hyper client.

#[path = "common/fake_vault.rs"]
mod fake_vault;

use bytes::Bytes;
use fake_vault::{FakeVault, Fault};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One request; `Err` when the transport failed (connect refused, connection cut, ...).
async fn call(
    c: &HttpClient,
    fv: &FakeVault,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(StatusCode, Value), hyper_util::client::legacy::Error> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{}{}", fv.url(), path));
    if let Some(t) = token {
        b = b.header("X-Vault-Token", t);
    }
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    let resp = c
        .request(b.body(Full::new(Bytes::from(body))).unwrap())
        .await?;
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/json"
    );
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).expect("json body");
    Ok((status, v))
}

async fn get(
    c: &HttpClient,
    fv: &FakeVault,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    try_get(c, fv, path, token).await.unwrap()
}

/// A GET whose transport may fail (`Err` when connecting or the connection failed).
async fn try_get(
    c: &HttpClient,
    fv: &FakeVault,
    path: &str,
    token: Option<&str>,
) -> Result<(StatusCode, Value), hyper_util::client::legacy::Error> {
    call(c, fv, Method::GET, path, token, None).await
}

async fn post(
    c: &HttpClient,
    fv: &FakeVault,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    call(c, fv, Method::POST, path, token, Some(body))
        .await
        .unwrap()
}

async fn approle_login(
    c: &HttpClient,
    fv: &FakeVault,
    role_id: &str,
    secret_id: &str,
) -> (StatusCode, Value) {
    post(
        c,
        fv,
        "/v1/auth/approle/login",
        None,
        json!({"role_id": role_id, "secret_id": secret_id}),
    )
    .await
}

async fn login_token(c: &HttpClient, fv: &FakeVault) -> String {
    let (s, v) = approle_login(c, fv, "rid", "sid").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["auth"]["client_token"].as_str().unwrap().to_string()
}

fn assert_envelope(v: &Value) {
    for k in [
        "request_id",
        "lease_id",
        "renewable",
        "lease_duration",
        "data",
        "wrap_info",
        "warnings",
        "auth",
    ] {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
    let rid = v["request_id"].as_str().unwrap();
    assert_eq!(rid.len(), 36, "{rid}");
    assert_eq!(rid.matches('-').count(), 4, "{rid}");
}

fn assert_denied(s: StatusCode, v: &Value) {
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v, &json!({"errors": ["permission denied"]}));
}

/// `token` is refused ([`assert_denied`]) by a read of `secret/nim`, renew-self and lookup-self.
async fn token_is_refused(c: &HttpClient, fv: &FakeVault, token: &str) {
    let (s, v) = get(c, fv, "/v1/secret/data/nim", Some(token)).await;
    assert_denied(s, &v);
    let (s, v) = post(c, fv, "/v1/auth/token/renew-self", Some(token), json!({})).await;
    assert_denied(s, &v);
    let (s, v) = get(c, fv, "/v1/auth/token/lookup-self", Some(token)).await;
    assert_denied(s, &v);
}

/// Log in again (AppRole rid/sid) and read `secret/nim` with the new token: the status.
async fn fresh_login_reads_nim(c: &HttpClient, fv: &FakeVault) -> StatusCode {
    let token = login_token(c, fv).await;
    get(c, fv, "/v1/secret/data/nim", Some(&token)).await.0
}

/// A fresh fake Vault and a client for it.
async fn start_fake() -> (Arc<FakeVault>, HttpClient) {
    (FakeVault::start().await, client())
}

#[test]
fn rfc3339_formatting() {
    let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
    assert_eq!(fake_vault::rfc3339(t), "2023-11-14T22:13:20.000000123Z");
    let t = UNIX_EPOCH + secs(951_782_400); // leap day
    assert_eq!(fake_vault::rfc3339(t), "2000-02-29T00:00:00.000000000Z");
    assert_eq!(
        fake_vault::rfc3339(UNIX_EPOCH),
        "1970-01-01T00:00:00.000000000Z"
    );
}

#[tokio::test]
async fn approle_login_and_kv2_reads() {
    let fv = FakeVault::start().await;
    assert_eq!(fv.url(), format!("http://127.0.0.1:{}", fv.addr().port()));
    let c = client();
    fv.add_approle("approle", "rid", "sid", secs(60), secs(120), true);
    assert_eq!(
        fv.put_kv2("secret", "nim/prod", json!({"api_key": "nvapi-1"})),
        1
    );

    // Login: full envelope and auth block.
    let (s, v) = approle_login(&c, &fv, "rid", "sid").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_envelope(&v);
    assert_eq!(v["lease_id"], "");
    assert_eq!(v["renewable"], false);
    assert_eq!(v["lease_duration"], 0);
    assert!(v["data"].is_null());
    let auth = &v["auth"];
    let token = auth["client_token"].as_str().unwrap().to_string();
    assert!(token.starts_with("hvs.fake-"), "{token}");
    assert_eq!(auth["lease_duration"], 60);
    assert_eq!(auth["renewable"], true);
    assert_eq!(auth["policies"], json!(["default", "nimgate"]));
    assert_eq!(auth["token_policies"], json!(["default", "nimgate"]));
    assert_eq!(auth["metadata"], json!({"role_name": "nimgate"}));
    assert_eq!(auth["token_type"], "service");
    assert_eq!(auth["orphan"], true);
    assert_eq!(auth["num_uses"], 0);
    assert!(auth["mfa_requirement"].is_null());
    assert!(!auth["accessor"].as_str().unwrap().is_empty());
    assert!(!auth["entity_id"].as_str().unwrap().is_empty());
    assert_eq!(fv.tokens_issued(), vec![token.clone()]);

    // A second login issues a different token.
    let token2 = login_token(&c, &fv).await;
    assert_ne!(token, token2);

    // Bad credentials.
    for (r, sct) in [("rid", "wrong"), ("nope", "sid"), ("rid", "")] {
        let (s, v) = approle_login(&c, &fv, r, sct).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v, json!({"errors": ["invalid role or secret ID"]}));
    }
    assert_eq!(fv.tokens_issued().len(), 2);

    // KV v2 read with metadata.
    let (s, v) = get(&c, &fv, "/v1/secret/data/nim/prod", Some(&token)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_envelope(&v);
    assert_eq!(v["lease_duration"], 0);
    assert!(v["auth"].is_null());
    assert_eq!(v["data"]["data"], json!({"api_key": "nvapi-1"}));
    let md = &v["data"]["metadata"];
    assert_eq!(md["version"], 1);
    assert_eq!(md["deletion_time"], "");
    assert_eq!(md["destroyed"], false);
    assert!(md["custom_metadata"].is_null());
    let created = md["created_time"].as_str().unwrap();
    let year = 1970
        + SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 31_556_952;
    assert!(created.starts_with(&format!("{year}-")), "{created}");
    assert!(created.ends_with('Z'), "{created}");

    // Version bump.
    assert_eq!(
        fv.put_kv2("secret", "nim/prod", json!({"api_key": "nvapi-2"})),
        2
    );
    let (_, v) = get(&c, &fv, "/v1/secret/data/nim/prod", Some(&token)).await;
    assert_eq!(v["data"]["data"]["api_key"], "nvapi-2");
    assert_eq!(v["data"]["metadata"]["version"], 2);
    // Pinned versions.
    let (s, v) = get(&c, &fv, "/v1/secret/data/nim/prod?version=1", Some(&token)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"]["data"]["api_key"], "nvapi-1");
    assert_eq!(v["data"]["metadata"]["version"], 1);
    let (_, v) = get(&c, &fv, "/v1/secret/data/nim/prod?version=0", Some(&token)).await;
    assert_eq!(v["data"]["metadata"]["version"], 2);
    let (s, v) = get(&c, &fv, "/v1/secret/data/nim/prod?version=9", Some(&token)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v, json!({"errors": []}));

    // Without metadata.
    fv.set_kv2_metadata(false);
    let (s, v) = get(&c, &fv, "/v1/secret/data/nim/prod", Some(&token2)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"], json!({"data": {"api_key": "nvapi-2"}}));
    fv.set_kv2_metadata(true);

    // Unknown secret, unknown path, non-data path in a KV v2 mount.
    for p in [
        "/v1/secret/data/nim/dev",
        "/v1/nothing/here",
        "/v1/secret/metadata/nim/prod",
        "/healthz",
    ] {
        let (s, v) = get(&c, &fv, p, Some(&token)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{p}");
        assert_eq!(v, json!({"errors": []}), "{p}");
    }
    // Missing / unknown token.
    let (s, v) = get(&c, &fv, "/v1/secret/data/nim/prod", None).await;
    assert_denied(s, &v);
    let (s, v) = get(&c, &fv, "/v1/secret/data/nim/prod", Some("hvs.bogus")).await;
    assert_denied(s, &v);

    // Observation: counts and log (incl. X-Vault-Namespace and body).
    let req = Request::builder()
        .uri(format!("{}/v1/secret/data/nim/prod", fv.url()))
        .header("X-Vault-Token", &token)
        .header("X-Vault-Namespace", "team-a/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(c.request(req).await.unwrap().status(), StatusCode::OK);
    assert_eq!(fv.count("login"), 5);
    assert_eq!(fv.count("read"), 11);
    assert_eq!(fv.count("requests"), 18);
    assert_eq!(fv.count("renew"), 0);
    assert_eq!(fv.count("bogus"), 0);
    let log = fv.log();
    assert_eq!(log.len(), 18);
    assert_eq!(log[0].method, Method::POST);
    assert_eq!(log[0].path, "/v1/auth/approle/login");
    let body: Value = serde_json::from_slice(&log[0].body).unwrap();
    assert_eq!(body, json!({"role_id": "rid", "secret_id": "sid"}));
    assert!(log
        .iter()
        .any(|s| s.path == "/v1/secret/data/nim/prod?version=1"));
    let last = log.last().unwrap();
    assert_eq!(last.headers.get("x-vault-namespace").unwrap(), "team-a/");
    assert_eq!(last.headers.get("x-vault-token").unwrap(), token.as_str());
}

#[tokio::test]
async fn kv1_read() {
    let (fv, c) = start_fake().await;
    fv.add_token("agent-token", secs(60), secs(60), false);
    fv.put_kv1("kv", "nim/prod", json!({"api_key": "nvapi-v1"}));
    fv.put_kv2("kv2", "nim/prod", json!({"api_key": "nvapi-v2"}));
    let (s, v) = get(&c, &fv, "/v1/kv/nim/prod", Some("agent-token")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_envelope(&v);
    assert_eq!(v["lease_duration"], 2_764_800);
    assert_eq!(v["data"], json!({"api_key": "nvapi-v1"}));
    // Overwrite.
    fv.put_kv1("kv", "nim/prod", json!({"api_key": "nvapi-v1b"}));
    let (_, v) = get(&c, &fv, "/v1/kv/nim/prod", Some("agent-token")).await;
    assert_eq!(v["data"]["api_key"], "nvapi-v1b");
    // KV v1 mounts have no data/ prefix; KV v2 mounts need it.
    let (s, _) = get(&c, &fv, "/v1/kv/data/nim/prod", Some("agent-token")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = get(&c, &fv, "/v1/kv2/nim/prod", Some("agent-token")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = get(&c, &fv, "/v1/kv/nim/other", Some("agent-token")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = get(&c, &fv, "/v1/kv/nim/prod", None).await;
    assert_denied(s, &v);
    // Added tokens are not "issued".
    assert!(fv.tokens_issued().is_empty());
}

#[tokio::test]
async fn token_expiry() {
    let (fv, c) = start_fake().await;
    fv.add_approle("approle", "rid", "sid", secs(1), secs(10), true);
    fv.put_kv2("secret", "nim", json!({"k": "v"}));
    let token = login_token(&c, &fv).await;
    let (s, _) = get(&c, &fv, "/v1/secret/data/nim", Some(&token)).await;
    assert_eq!(s, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    token_is_refused(&c, &fv, &token).await;
    // A fresh login works again.
    assert_eq!(fresh_login_reads_nim(&c, &fv).await, StatusCode::OK);
}

#[tokio::test]
async fn renew_self_extends_and_caps() {
    let (fv, c) = start_fake().await;
    fv.put_kv2("secret", "nim", json!({"k": "v"}));
    fv.add_token("t-renew", secs(2), secs(3), true);
    let renew = "/v1/auth/token/renew-self";

    let (s, v) = post(&c, &fv, renew, Some("t-renew"), json!({"increment": "2s"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_envelope(&v);
    assert_eq!(v["auth"]["client_token"], "t-renew");
    assert_eq!(v["auth"]["lease_duration"], 2);
    assert_eq!(v["auth"]["renewable"], true);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Renewed at t=0 to t=2, so still valid at 1.5; renewing now is capped at max_ttl (t=3).
    let (s, v) = post(&c, &fv, renew, Some("t-renew"), json!({"increment": 2})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["auth"]["lease_duration"], 1, "{v}");
    let (_, v) = get(&c, &fv, "/v1/auth/token/lookup-self", Some("t-renew")).await;
    assert!(v["data"]["ttl"].as_u64().unwrap() <= 1, "{v}");

    // Refused renewals.
    fv.set_renew_refused(true);
    let (s, v) = post(&c, &fv, renew, Some("t-renew"), json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v, json!({"errors": ["lease is not renewable"]}));
    fv.set_renew_refused(false);

    fv.add_token("t-fixed", secs(30), secs(60), false);
    let (s, v) = post(&c, &fv, renew, Some("t-fixed"), json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v, json!({"errors": ["lease is not renewable"]}));

    // Missing token.
    let (s, v) = post(&c, &fv, renew, None, json!({})).await;
    assert_denied(s, &v);

    // Past max_ttl the token is dead even though it was renewed.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (s, v) = get(&c, &fv, "/v1/secret/data/nim", Some("t-renew")).await;
    assert_denied(s, &v);
    let (s, v) = post(&c, &fv, renew, Some("t-renew"), json!({})).await;
    assert_denied(s, &v);
    assert_eq!(fv.count("renew"), 6);
}

#[tokio::test]
async fn lookup_self() {
    let (fv, c) = start_fake().await;
    fv.add_token("t-look", secs(10), secs(60), true);
    let (s, v) = get(&c, &fv, "/v1/auth/token/lookup-self", Some("t-look")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_envelope(&v);
    assert!(v["auth"].is_null());
    let d = &v["data"];
    assert_eq!(d["id"], "t-look");
    let ttl = d["ttl"].as_u64().unwrap();
    assert!((9..=10).contains(&ttl), "{ttl}");
    assert_eq!(d["creation_ttl"], 10);
    assert_eq!(d["renewable"], true);
    assert_eq!(d["type"], "service");
    assert_eq!(d["orphan"], true);
    assert_eq!(d["explicit_max_ttl"], 0);
    assert_eq!(d["num_uses"], 0);
    assert_eq!(d["path"], "auth/token/create");
    assert_eq!(d["policies"], json!(["default", "nimgate"]));
    assert!(d["meta"].is_null());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let created = d["creation_time"].as_u64().unwrap();
    assert!(created <= now && now - created < 5);
    assert!(d["expire_time"].as_str().unwrap().ends_with('Z'));
    assert!(d["issue_time"].as_str().unwrap().ends_with('Z'));
    assert!(!d["accessor"].as_str().unwrap().is_empty());

    // Login-issued token reports its auth path.
    fv.add_approle("approle", "rid", "sid", secs(30), secs(60), true);
    let token = login_token(&c, &fv).await;
    let (_, v) = get(&c, &fv, "/v1/auth/token/lookup-self", Some(&token)).await;
    assert_eq!(v["data"]["path"], "auth/approle/login");
    assert_eq!(v["data"]["display_name"], "approle");
    assert_eq!(v["data"]["creation_ttl"], 30);

    // ttl > max_ttl is clamped at issue.
    fv.add_token("t-clamp", secs(100), secs(20), true);
    let (_, v) = get(&c, &fv, "/v1/auth/token/lookup-self", Some("t-clamp")).await;
    assert_eq!(v["data"]["creation_ttl"], 20);

    let (s, v) = get(&c, &fv, "/v1/auth/token/lookup-self", None).await;
    assert_denied(s, &v);
    assert_eq!(fv.count("lookup"), 4);
}

#[tokio::test]
async fn kubernetes_login() {
    let (fv, c) = start_fake().await;
    fv.add_k8s_role(
        "kubernetes",
        "nimgate",
        &["jwt-a", "jwt-b"],
        secs(45),
        secs(90),
        true,
    );
    fv.put_kv2("secret", "nim", json!({"k": "v"}));
    let login = |role: &'static str, jwt: &'static str| {
        let c = c.clone();
        let fv = fv.clone();
        async move {
            post(
                &c,
                &fv,
                "/v1/auth/kubernetes/login",
                None,
                json!({"role": role, "jwt": jwt}),
            )
            .await
        }
    };

    let (s, v) = login("nimgate", "jwt-b").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_envelope(&v);
    assert_eq!(v["auth"]["lease_duration"], 45);
    assert_eq!(v["auth"]["metadata"]["role"], "nimgate");
    let token = v["auth"]["client_token"].as_str().unwrap().to_string();
    let (s, _) = get(&c, &fv, "/v1/secret/data/nim", Some(&token)).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = get(&c, &fv, "/v1/auth/token/lookup-self", Some(&token)).await;
    assert_eq!(v["data"]["path"], "auth/kubernetes/login");

    for (role, jwt) in [("nimgate", "jwt-x"), ("other", "jwt-a"), ("nimgate", "")] {
        let (s, v) = login(role, jwt).await;
        assert_denied(s, &v);
    }

    // Replacing the accepted list.
    fv.add_k8s_role(
        "kubernetes",
        "nimgate",
        &["jwt-c"],
        secs(45),
        secs(90),
        true,
    );
    let (s, v) = login("nimgate", "jwt-a").await;
    assert_denied(s, &v);
    let (s, _) = login("nimgate", "jwt-c").await;
    assert_eq!(s, StatusCode::OK);

    // Unknown auth mount.
    let (s, v) = post(
        &c,
        &fv,
        "/v1/auth/approle/login",
        None,
        json!({"role_id": "a", "secret_id": "b"}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v, json!({"errors": []}));

    assert_eq!(fv.count("login"), 7);
    assert_eq!(fv.tokens_issued().len(), 2);
}

#[tokio::test]
async fn revoke_all_tokens() {
    let (fv, c) = start_fake().await;
    fv.add_approle("approle", "rid", "sid", secs(60), secs(120), true);
    fv.add_token("agent", secs(60), secs(120), true);
    fv.put_kv2("secret", "nim", json!({"k": "v"}));
    let t1 = login_token(&c, &fv).await;
    for t in [t1.as_str(), "agent"] {
        let (s, _) = get(&c, &fv, "/v1/secret/data/nim", Some(t)).await;
        assert_eq!(s, StatusCode::OK);
    }
    fv.revoke_all_tokens();
    for t in [t1.as_str(), "agent"] {
        token_is_refused(&c, &fv, t).await;
    }
    assert_eq!(fresh_login_reads_nim(&c, &fv).await, StatusCode::OK);
}

#[tokio::test]
async fn deny_secret() {
    let (fv, c) = start_fake().await;
    fv.add_token("t", secs(60), secs(60), true);
    fv.put_kv2("secret", "nim/prod", json!({"k": "v"}));
    fv.put_kv2("secret", "nim/dev", json!({"k": "d"}));
    fv.put_kv1("kv", "nim", json!({"k": "1"}));
    fv.deny_secret("secret/nim/prod", true);
    fv.deny_secret("kv/nim", true);
    let (s, v) = get(&c, &fv, "/v1/secret/data/nim/prod", Some("t")).await;
    assert_denied(s, &v);
    let (s, v) = get(&c, &fv, "/v1/kv/nim", Some("t")).await;
    assert_denied(s, &v);
    let (s, _) = get(&c, &fv, "/v1/secret/data/nim/dev", Some("t")).await;
    assert_eq!(s, StatusCode::OK);
    fv.deny_secret("secret/nim/prod", false);
    let (s, _) = get(&c, &fv, "/v1/secret/data/nim/prod", Some("t")).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn faults_503_delay_down() {
    let (fv, c) = start_fake().await;
    fv.add_approle("approle", "rid", "sid", secs(60), secs(120), true);
    fv.put_kv2("secret", "nim", json!({"k": "v"}));
    let token = login_token(&c, &fv).await;

    // 503 on every endpoint, still counted and logged.
    fv.set_fault(Fault::Status503);
    let (s, v) = get(&c, &fv, "/v1/secret/data/nim", Some(&token)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v, json!({"errors": ["Vault is sealed"]}));
    let (s, _) = approle_login(&c, &fv, "rid", "sid").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(fv.count("login"), 2);
    assert_eq!(fv.count("read"), 1);
    assert_eq!(fv.tokens_issued().len(), 1);

    // Delay.
    let delay = Duration::from_millis(300);
    fv.set_fault(Fault::Delay(delay));
    let t0 = Instant::now();
    let (s, _) = get(&c, &fv, "/v1/secret/data/nim", Some(&token)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(t0.elapsed() >= delay, "{:?}", t0.elapsed());
    fv.set_fault(Fault::None);
    let t0 = Instant::now();
    let (s, _) = get(&c, &fv, "/v1/secret/data/nim", Some(&token)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(t0.elapsed() < delay);

    // Down: the pooled keep-alive connection is cut and new connects are refused.
    let addr = fv.addr();
    fv.set_fault(Fault::Down);
    let e = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    let r = try_get(&c, &fv, "/v1/secret/data/nim", Some(&token)).await;
    assert!(r.is_err(), "pooled client: {r:?}");
    let r = try_get(&client(), &fv, "/v1/secret/data/nim", Some(&token)).await;
    let err = r.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    // Setting Down twice is harmless.
    fv.set_fault(Fault::Down);

    // Back up, same port, old client and a new one both work.
    fv.set_fault(Fault::None);
    assert_eq!(fv.addr(), addr);
    let (s, _) = get(&c, &fv, "/v1/secret/data/nim", Some(&token)).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = get(&client(), &fv, "/v1/secret/data/nim", Some(&token)).await;
    assert_eq!(s, StatusCode::OK);

    // Down -> 503 also re-binds.
    fv.set_fault(Fault::Down);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    fv.set_fault(Fault::Status503);
    let (s, _) = get(&client(), &fv, "/v1/secret/data/nim", Some(&token)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    fv.set_fault(Fault::None);

    // Every request that reached the server was recorded (the refused ones did not).
    assert_eq!(fv.count("requests") as usize, fv.log().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_and_up_on_multi_thread_runtime() {
    let (fv, c) = start_fake().await;
    fv.add_token("t", secs(60), secs(60), true);
    for _ in 0..3 {
        let (s, _) = get(&c, &fv, "/v1/auth/token/lookup-self", Some("t")).await;
        assert_eq!(s, StatusCode::OK);
        fv.set_fault(Fault::Down);
        assert!(tokio::net::TcpStream::connect(fv.addr()).await.is_err());
        assert!(try_get(&c, &fv, "/v1/auth/token/lookup-self", Some("t"))
            .await
            .is_err());
        fv.set_fault(Fault::None);
    }
    let (s, _) = get(&c, &fv, "/v1/auth/token/lookup-self", Some("t")).await;
    assert_eq!(s, StatusCode::OK);
}

/// The shapes parse with vaultrs (the client nimgate uses), including its strict structs.
#[tokio::test]
async fn vaultrs_compat() {
    use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
    use vaultrs::error::ClientError;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let fv = FakeVault::start().await;
    fv.add_approle("approle", "rid", "sid", secs(60), secs(120), true);
    fv.add_k8s_role(
        "kubernetes",
        "nimgate",
        &["jwt-a"],
        secs(60),
        secs(120),
        true,
    );
    fv.put_kv2("secret", "nim/prod", json!({"api_key": "nvapi-1"}));
    fv.put_kv2("secret", "nim/prod", json!({"api_key": "nvapi-2"}));
    fv.put_kv1("kv", "nim", json!({"api_key": "nvapi-kv1"}));
    let mut client = VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(fv.url())
            .set_namespace("team-a".to_string())
            .build()
            .unwrap(),
    )
    .unwrap();

    let auth = vaultrs::auth::approle::login(&client, "approle", "rid", "sid")
        .await
        .unwrap();
    assert_eq!(auth.lease_duration, 60);
    client.set_token(&auth.client_token);
    let v: Value = vaultrs::kv2::read(&client, "secret", "nim/prod")
        .await
        .unwrap();
    assert_eq!(v["api_key"], "nvapi-2");
    let v: Value = vaultrs::kv2::read_version(&client, "secret", "nim/prod", 1)
        .await
        .unwrap();
    assert_eq!(v["api_key"], "nvapi-1");
    let v: Value = vaultrs::kv1::get(&client, "kv", "nim").await.unwrap();
    assert_eq!(v["api_key"], "nvapi-kv1");
    let look = vaultrs::token::lookup_self(&client).await.unwrap();
    assert_eq!(look.id, auth.client_token);
    assert_eq!(look.path, "auth/approle/login");
    let renewed = vaultrs::token::renew_self(&client, Some("30s"))
        .await
        .unwrap();
    assert_eq!(renewed.client_token, auth.client_token);
    assert_eq!(renewed.lease_duration, 60);
    let k8s = vaultrs::auth::kubernetes::login(&client, "kubernetes", "nimgate", "jwt-a")
        .await
        .unwrap();
    assert_eq!(k8s.lease_duration, 60);

    fv.revoke_all_tokens();
    match vaultrs::kv2::read::<Value>(&client, "secret", "nim/prod").await {
        Err(ClientError::APIError { code, errors }) => {
            assert_eq!(code, 403);
            assert_eq!(errors, vec!["permission denied".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    assert!(fv
        .log()
        .iter()
        .all(|s| s.headers.get("x-vault-namespace").unwrap() == "team-a"));
}
