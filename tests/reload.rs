#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Live config reload (issue 17), against the built binary: SIGHUP and file changes (including a
//! Kubernetes-style symlink swap of `auth.clients_file`) add and remove clients, change limits and
//! secret settings, while traffic and an SSE stream keep flowing; a broken edit is refused whole
//! and the old config keeps serving; unchanged clients keep their rate-limit buckets; every
//! attempt is a `config_reload` record and a metric.

mod common;

use common::bin::{kill_pid, spawn_serve, wait_ready, Proc};
use common::*;
use http_body_util::BodyExt;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEY_C: &str = "ngk_test_client_key_cccccccccccccccccccccccc";

fn client_table(id: &str, key: &str, extra: &str) -> String {
    format!(
        "[[clients]]\nid = \"{id}\"\nkey_sha256 = \"{}\"\n{extra}\n",
        nimgate::auth::key_digest_hex(key)
    )
}

/// The test's config: `write_config`'s clients team-a/team-b (with their extras), then `extra`.
fn config(dir: &Path, a: &str, b: &str, extra: &str) -> PathBuf {
    // A fixed NIM address is filled in by `rewrite`; the first write just makes the file.
    common::bin::write_config(dir, "gw", nim_of(dir), (a, b), extra)
}

/// The fake NIM address the test stored beside the config.
fn nim_of(dir: &Path) -> SocketAddr {
    std::fs::read_to_string(dir.join("nim.addr"))
        .unwrap()
        .parse()
        .unwrap()
}

async fn setup(sse_events: u64) -> (tempfile::TempDir, Arc<nimgate::fakenim::FakeNim>) {
    let dir = tempfile::tempdir().unwrap();
    let (nim, addr) = fake_nim(
        vec![NIM_KEY.into(), "nvapi-second-key".into()],
        Duration::from_millis(100),
    )
    .await;
    nim.sse_events.store(sse_events, Ordering::Relaxed);
    std::fs::write(dir.path().join("nim.addr"), addr.to_string()).unwrap();
    (dir, nim)
}

/// Serve `cfg` with `server.config_poll_interval = "200ms"`, ready.
async fn serve_polling(cfg: &Path) -> Proc {
    let text = std::fs::read_to_string(cfg).unwrap();
    let polling = text.replacen(
        "[server]\n",
        "[server]\nconfig_poll_interval = \"200ms\"\n",
        1,
    );
    std::fs::write(cfg, polling).unwrap();
    let p = spawn_serve(cfg, Some("info"));
    wait_ready(p.admin).await;
    p
}

async fn chat(gw: SocketAddr, key: &str) -> (u16, Value) {
    let url = format!("http://{gw}/v1/chat/completions");
    send_json(post(&url, Some(key), &chat_body(false))).await
}

fn records(dir: &Path, event: &str) -> Vec<Value> {
    read_audit(&dir.join("gw.audit.jsonl"))
        .into_iter()
        .filter(|r| r["event"] == event)
        .collect()
}

/// SIGHUP, then wait for the `config_reload` record it causes: that record.
async fn sighup(p: &Proc, dir: &Path) -> Value {
    let before = records(dir, "config_reload").len();
    assert!(kill_pid(p.child.id(), "-HUP").success());
    wait_reload(dir, before).await
}

/// Wait (max 15 s) for `config_reload` record number `before + 1`.
async fn wait_reload(dir: &Path, before: usize) -> Value {
    for _ in 0..750 {
        let r = records(dir, "config_reload");
        if r.len() > before {
            return r[before].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no config_reload record");
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

async fn metric(admin: SocketAddr, line_start: &str) -> Option<f64> {
    let (_, text) = get_admin(admin, "/metrics").await.unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Continuous traffic with team-a's key until `stop`: (requests, failures).
fn traffic(gw: SocketAddr, stop: Arc<AtomicUsize>) -> tokio::task::JoinHandle<(usize, Vec<u16>)> {
    tokio::spawn(async move {
        let c = client();
        let url = format!("http://{gw}/v1/chat/completions");
        let (mut n, mut failed) = (0, Vec::new());
        while stop.load(Ordering::Relaxed) == 0 {
            let r = c
                .request(post(&url, Some(CLIENT_KEY), &chat_body(false)))
                .await
                .unwrap();
            let s = r.status().as_u16();
            let _ = r.into_body().collect().await;
            n += 1;
            if s != 200 {
                failed.push(s);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (n, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_clients_under_traffic_and_a_broken_edit_changes_nothing() {
    // 60 events 100 ms apart: one stream stays open across every reload below.
    let (dir, _nim) = setup(60).await;
    let d = dir.path();
    let poll = "[server]\nconfig_poll_interval = \"0s\"\n";
    let cfg = config(d, "", "", "");
    // `[server]` is already in the file: put the setting into it.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replacen("[server]\n", poll, 1)).unwrap();
    let base = std::fs::read_to_string(&cfg).unwrap();
    let p = spawn_serve(&cfg, Some("info"));
    wait_ready(p.admin).await;
    let gw = p.gw;

    // An SSE stream opened before any reload.
    let stream = tokio::spawn(async move {
        let url = format!("http://{gw}/v1/chat/completions");
        let r = client()
            .request(post(&url, Some(CLIENT_KEY), &chat_body(true)))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    });
    let stop = Arc::new(AtomicUsize::new(0));
    let load = traffic(gw, stop.clone());

    assert_eq!(chat(gw, KEY_C).await.0, 401, "team-c does not exist yet");
    // Add team-c.
    std::fs::write(&cfg, format!("{base}{}", client_table("team-c", KEY_C, ""))).unwrap();
    let r = sighup(&p, d).await;
    assert_eq!(r["reason"], "applied", "{r}");
    assert_eq!(r["config"]["trigger"], "sighup");
    assert_eq!(names(&r["config"]["clients"]["added"]), ["team-c"]);
    let text = std::fs::read(&cfg).unwrap();
    assert_eq!(
        r["config"]["sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&text))
    );
    assert!(!r
        .to_string()
        .contains(&nimgate::auth::key_digest_hex(KEY_C)));
    assert_eq!(
        chat(gw, KEY_C).await.0,
        200,
        "team-c's key works after the reload"
    );

    // Remove team-b: 401 and a denied record.
    let without_b = std::fs::read_to_string(&cfg).unwrap();
    let b_table = format!(
        "[[clients]]\nid = \"team-b\"\nkey_sha256 = \"{}\"\n",
        nimgate::auth::key_digest_hex(CLIENT_KEY_B)
    );
    assert!(without_b.contains(&b_table));
    std::fs::write(&cfg, without_b.replacen(&b_table, "", 1)).unwrap();
    assert_eq!(chat(gw, CLIENT_KEY_B).await.0, 200, "before the reload");
    let r = sighup(&p, d).await;
    assert_eq!(names(&r["config"]["clients"]["removed"]), ["team-b"], "{r}");
    let (status, body) = chat(gw, CLIENT_KEY_B).await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&body), "invalid_api_key");
    let denied = || {
        records(d, "denied")
            .iter()
            .any(|r| r["reason"] == "unknown_key")
    };
    assert!(
        eventually(denied).await,
        "a denied record for the removed client"
    );

    // A broken edit: refused whole, the field named, the old config still serving.
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{good}{}", client_table("team-d", "k", "rpm = \"lots\"")),
    )
    .unwrap();
    let r = sighup(&p, d).await;
    assert_eq!(r["reason"], "refused", "{r}");
    let errors = names(&r["config"]["errors"]);
    assert!(errors.iter().any(|e| e.contains("clients")), "{errors:?}");
    assert!(p.stderr.lock().unwrap().contains("config reload refused"));
    assert_eq!(chat(gw, KEY_C).await.0, 200, "the old config serves on");
    assert_eq!(get_admin(p.admin, "/readyz").await.unwrap().0, 200);
    // A validation failure (not a parse error) is refused the same way.
    std::fs::write(&cfg, format!("{good}{}", client_table("team-a", KEY_C, ""))).unwrap();
    let r = sighup(&p, d).await;
    assert_eq!(r["reason"], "refused", "{r}");
    assert!(names(&r["config"]["errors"])
        .iter()
        .any(|e| e.starts_with("clients")));
    assert_eq!(chat(gw, KEY_C).await.0, 200);

    // 20 more reloads, alternating team-c's limit, under the same traffic and stream.
    for i in 0..20 {
        let extra = if i % 2 == 0 { "rpm = 100000" } else { "" };
        let next = good.replacen(
            &client_table("team-c", KEY_C, ""),
            &client_table("team-c", KEY_C, extra),
            1,
        );
        std::fs::write(&cfg, next).unwrap();
        let r = sighup(&p, d).await;
        assert_eq!(r["reason"], "applied", "reload {i}: {r}");
        assert_eq!(names(&r["config"]["clients"]["changed"]), ["team-c"]);
    }
    stop.store(1, Ordering::Relaxed);
    let (n, failed) = load.await.unwrap();
    assert!(n > 20, "traffic flowed: {n} requests");
    assert!(
        failed.is_empty(),
        "no request failed across the reloads: {failed:?}"
    );
    let sse = stream.await.unwrap();
    assert!(sse.contains("tok59 "), "the stream was not cut: {sse}");
    assert!(sse.trim_end().ends_with("data: [DONE]"));
    assert_eq!(
        metric(p.admin, "nimgate_config_reloads_total{outcome=\"applied\"}").await,
        Some(22.0)
    );
    assert_eq!(
        metric(p.admin, "nimgate_config_reloads_total{outcome=\"refused\"}").await,
        Some(2.0)
    );
    assert!(
        metric(p.admin, "nimgate_requests_total{client=\"team-c\"")
            .await
            .is_some(),
        "a client added by a reload gets its own metrics label"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_limit_applies_and_unchanged_clients_keep_their_buckets() {
    let (dir, _nim) = setup(3).await;
    let d = dir.path();
    // One request a minute after a burst: nothing refills during the test.
    let cfg = config(d, "rpm = 1\nburst = 3", "rpm = 1\nburst = 2", "");
    let p = spawn_serve(&cfg, Some("info"));
    wait_ready(p.admin).await;
    for _ in 0..3 {
        assert_eq!(chat(p.gw, CLIENT_KEY).await.0, 200);
    }
    assert_eq!(chat(p.gw, CLIENT_KEY).await.0, 429);
    for _ in 0..2 {
        assert_eq!(chat(p.gw, CLIENT_KEY_B).await.0, 200);
    }
    assert_eq!(chat(p.gw, CLIENT_KEY_B).await.0, 429);
    // team-b gets a larger burst; team-a is untouched.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replacen("burst = 2", "burst = 5", 1)).unwrap();
    let r = sighup(&p, d).await;
    assert_eq!(r["reason"], "applied", "{r}");
    assert_eq!(names(&r["config"]["clients"]["changed"]), ["team-b"]);
    assert_eq!(
        chat(p.gw, CLIENT_KEY).await.0,
        429,
        "an unchanged client keeps its bucket: no fresh burst from a reload"
    );
    for _ in 0..5 {
        assert_eq!(
            chat(p.gw, CLIENT_KEY_B).await.0,
            200,
            "the changed limit applies"
        );
    }
    assert_eq!(chat(p.gw, CLIENT_KEY_B).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_clients_file_is_seen_by_polling_even_as_a_symlink_swap() {
    let (dir, _nim) = setup(3).await;
    let d = dir.path();
    // The kubelet's layout: clients.toml -> ..data/clients.toml, ..data -> a timestamped dir.
    let write_version = |name: &str, body: &str| {
        let v = d.join(name);
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(v.join("clients.toml"), body).unwrap();
        let tmp = d.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&v, &tmp).unwrap();
        std::fs::rename(&tmp, d.join("..data")).unwrap();
    };
    write_version("v1", "");
    std::os::unix::fs::symlink(d.join("..data/clients.toml"), d.join("clients.toml")).unwrap();
    let extra = format!(
        "[auth]\nclients_file = \"{}\"\n",
        d.join("clients.toml").display()
    );
    let cfg = config(d, "", "", &extra);
    let p = serve_polling(&cfg).await;
    assert_eq!(chat(p.gw, KEY_C).await.0, 401);
    let before = records(d, "config_reload").len();
    write_version("v2", &client_table("team-c", KEY_C, ""));
    let r = wait_reload(d, before).await;
    assert_eq!(r["reason"], "applied", "{r}");
    assert_eq!(r["config"]["trigger"], "file_changed");
    assert_eq!(names(&r["config"]["clients"]["added"]), ["team-c"]);
    assert!(r["config"]["clients_file_sha256"].is_string());
    assert_eq!(chat(p.gw, KEY_C).await.0, 200);
    // Revoked by the next version: 401 within the poll interval.
    let before = records(d, "config_reload").len();
    write_version("v3", "");
    let r = wait_reload(d, before).await;
    assert_eq!(names(&r["config"]["clients"]["removed"]), ["team-c"], "{r}");
    assert_eq!(chat(p.gw, KEY_C).await.0, 401);
    // Nothing changed: no further attempt while polling.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(records(d, "config_reload").len(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_secret_settings_swap_the_key_without_a_gap_and_a_broken_one_is_refused() {
    let (dir, nim) = setup(3).await;
    let d = dir.path();
    let cfg = config(d, "", "", "");
    let p = spawn_serve(&cfg, Some("info"));
    wait_ready(p.admin).await;
    let stop = Arc::new(AtomicUsize::new(0));
    let load = traffic(p.gw, stop.clone());
    // The upstream's key now comes from another file (another key the NIM accepts).
    std::fs::write(d.join("key2"), "nvapi-second-key\n").unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let key1 = format!("path = \"{}\"", d.join("key").display());
    let key2 = format!("path = \"{}\"", d.join("key2").display());
    std::fs::write(&cfg, text.replacen(&key1, &key2, 1)).unwrap();
    let r = sighup(&p, d).await;
    assert_eq!(r["reason"], "applied", "{r}");
    assert_eq!(names(&r["config"]["upstreams"]["changed"]), ["default"]);
    assert_eq!(chat(p.gw, CLIENT_KEY).await.0, 200);
    let last = nim.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        last.headers.get("authorization").unwrap(),
        "Bearer nvapi-second-key",
        "the NIM got the key from the new source"
    );
    // A secret file that does not exist: refused, the working key stays.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let missing = format!("path = \"{}\"", d.join("no-such-key").display());
    std::fs::write(&cfg, text.replacen(&key2, &missing, 1)).unwrap();
    let r = sighup(&p, d).await;
    assert_eq!(r["reason"], "refused", "{r}");
    assert!(names(&r["config"]["errors"])
        .iter()
        .any(|e| e.contains("default")));
    assert_eq!(chat(p.gw, CLIENT_KEY).await.0, 200);
    stop.store(1, Ordering::Relaxed);
    let (n, failed) = load.await.unwrap();
    assert!(n > 5);
    assert!(
        failed.is_empty(),
        "no request saw a moment without a key: {failed:?}"
    );
    // Restart-only settings are reported and the rest applies.
    std::fs::write(&cfg, text).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let moved = text.replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1)
        + &client_table("team-c", KEY_C, "");
    std::fs::write(&cfg, moved).unwrap();
    let r = sighup(&p, d).await;
    assert_eq!(r["reason"], "applied", "{r}");
    assert_eq!(names(&r["config"]["needs_restart"]), ["server.listen"]);
    assert_eq!(chat(p.gw, KEY_C).await.0, 200, "the live part applied");
    assert!(p
        .stderr
        .lock()
        .unwrap()
        .contains("take effect only after a restart"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_follows_the_config() {
    let (dir, _nim) = setup(3).await;
    let d = dir.path();
    let cfg = config(d, "", "", "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let warn = text.replacen("[server]\n", "[server]\nlog_level = \"warn\"\n", 1);
    // No RUST_LOG: `server.log_level` decides. spawn_serve needs the (info) serving line, which
    // warn hides: start at info, then go to warn.
    let p = spawn_serve(&cfg, None);
    wait_ready(p.admin).await;
    std::fs::write(&cfg, &warn).unwrap();
    let r = sighup(&p, d).await;
    assert_eq!(r["reason"], "applied", "{r}");
    // At warn, the info line of the next reload is not written.
    std::fs::write(&cfg, format!("{warn}{}", client_table("team-c", KEY_C, ""))).unwrap();
    let lines_before = p.stderr.lock().unwrap().matches("config reloaded").count();
    let r = sighup(&p, d).await;
    assert_eq!(r["reason"], "applied", "{r}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        p.stderr.lock().unwrap().matches("config reloaded").count(),
        lines_before,
        "log_level = warn hides info lines"
    );
    // Back to info: the reload that sets it logs at info.
    std::fs::write(&cfg, format!("{text}{}", client_table("team-c", KEY_C, ""))).unwrap();
    sighup(&p, d).await;
    assert!(
        eventually(|| p.stderr.lock().unwrap().matches("config reloaded").count() > lines_before)
            .await,
        "log_level = info shows them again"
    );
    // A bad filter is a validation error naming the field.
    std::fs::write(
        &cfg,
        text.replacen("[server]\n", "[server]\nlog_level = \"=\"\n", 1),
    )
    .unwrap();
    let r = sighup(&p, d).await;
    assert_eq!(r["reason"], "refused", "{r}");
    assert_eq!(names(&r["config"]["errors"]), ["server.log_level"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_add_and_revoke_apply_to_the_running_gateway_while_traffic_flows() {
    let (dir, _nim) = setup(3).await;
    let d = dir.path();
    let clients = d.join("clients.toml");
    std::fs::write(&clients, "# gateway keys, managed with nimgate keys\n").unwrap();
    let extra = format!("[auth]\nclients_file = \"{}\"\n", clients.display());
    let cfg = config(d, "", "", &extra);
    let p = serve_polling(&cfg).await;
    let stop = Arc::new(AtomicUsize::new(0));
    let load = traffic(p.gw, stop.clone());

    let (f, c) = (clients.to_str().unwrap(), cfg.to_str().unwrap());
    let out = common::bin::run_bin(
        &["keys", "add", "--file", f, "--id", "team-c", "--config", c],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("ngk_"), "{key}");
    assert!(!std::fs::read_to_string(&clients).unwrap().contains(&key));
    let before = records(d, "config_reload").len();
    let r = wait_reload(d, before).await;
    assert_eq!(names(&r["config"]["clients"]["added"]), ["team-c"], "{r}");
    assert_eq!(
        chat(p.gw, &key).await.0,
        200,
        "the added key works without a restart"
    );

    let out = common::bin::run_bin(&["keys", "revoke", "--file", f, "--id", "team-c"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = wait_reload(d, before + 1).await;
    assert_eq!(names(&r["config"]["clients"]["removed"]), ["team-c"], "{r}");
    let (status, body) = chat(p.gw, &key).await;
    assert_eq!(status, 401, "revoked within the poll interval");
    assert_eq!(error_code(&body), "invalid_api_key");
    let denied = || {
        records(d, "denied")
            .iter()
            .any(|r| r["reason"] == "unknown_key" && !r.to_string().contains(&key))
    };
    assert!(eventually(denied).await, "a denied record without the key");
    stop.store(1, Ordering::Relaxed);
    let (n, failed) = load.await.unwrap();
    assert!(n > 5);
    assert!(
        failed.is_empty(),
        "others were served throughout: {failed:?}"
    );
}
