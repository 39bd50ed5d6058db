#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Chain-head anchoring (issue 19 point 5) with the built binary against real stores: a real
//! `redis-server` (Debian package) and a real OpenBao (`bao server -dev`) under a policy that
//! allows writing the anchor path only. The gateway anchors its synced head while serving and
//! once more at clean shutdown; `nimgate audit verify --anchors` then passes the untouched trail
//! and fails a trail whose tail was cut after the anchor (naming the chain and the seqs) or
//! whose anchored record was edited. An unsynced head is never anchored, and a store that is
//! down costs requests nothing: the failure is counted, recorded, and retried until it works.

mod common;

use common::bin::{kill_pid, run_bin, spawn_serve, wait_ready, Proc};
use common::openbao::{http, Bao};
use common::redis::{cli, Redis};
use common::*;
use serde_json::{json, Value};
use sha2::Digest;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A gateway config in `dir`: ports 0, the fake NIM at `nim`, `secret` as its `[secret]`
/// table(s), client `team-a`, the trail `dir/audit.jsonl` with `audit` keys, then `tail`.
fn config(dir: &Path, nim: SocketAddr, secret: &str, audit: &str, tail: &str) -> PathBuf {
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"http://{nim}\"\n{secret}\n\
             [[clients]]\nid = \"team-a\"\nkey_sha256 = \"{digest}\"\n\
             [audit]\npath = \"{trail}\"\n{audit}\n{tail}\n",
            digest = nimgate::auth::key_digest_hex(CLIENT_KEY),
            trail = dir.join("audit.jsonl").display(),
        ),
    )
    .unwrap();
    cfg
}

fn file_secret(dir: &Path) -> String {
    std::fs::write(dir.join("key"), format!("{NIM_KEY}\n")).unwrap();
    format!(
        "[secret]\nsource = \"file\"\npath = \"{}\"",
        dir.join("key").display()
    )
}

async fn chats(gw: SocketAddr, n: usize) {
    for _ in 0..n {
        let url = format!("http://{gw}/v1/chat/completions");
        let (s, _) = send_json(post(&url, Some(CLIENT_KEY), &chat_body(false))).await;
        assert_eq!(s, 200);
    }
}

fn lines(trail: &Path) -> Vec<String> {
    std::fs::read_to_string(trail)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn field(line: &str, name: &str) -> Value {
    serde_json::from_str::<Value>(line).unwrap()[name].clone()
}

/// Once `n` `done` records are in the trail (they are written within 25 ms of the response):
/// the seq of its last record.
async fn last_seq_after(trail: &Path, n: usize) -> u64 {
    wait_for("the done records", || {
        let all = lines(trail);
        let dones = all
            .iter()
            .filter(|l| l.contains("\"event\":\"done\""))
            .count();
        (dones >= n).then(|| field(all.last().unwrap(), "seq").as_u64().unwrap())
    })
    .await
}

/// The trail's chain id (of its first record).
fn chain_of(trail: &Path) -> String {
    field(&lines(trail)[0], "chain")
        .as_str()
        .unwrap()
        .to_string()
}

/// SIGTERM (a clean shutdown: drain, flush, final anchor), then wait for the exit.
fn stop(p: &mut Proc) -> String {
    kill_pid(p.child.id(), "-TERM");
    let (status, _, err) = p.finish();
    assert!(status.success(), "{status:?}\n{err}");
    err
}

/// `nimgate audit verify ARGS… FILE`: (exit code, stdout, stderr).
fn verify(args: &[&str], trail: &Path) -> (Option<i32>, String, String) {
    let mut all = vec!["audit", "verify"];
    all.extend_from_slice(args);
    let out = run_bin(&all, &[trail]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The anchor of `chain` in Redis, if any.
fn redis_anchor(redis: &Redis, chain: &str) -> Option<Value> {
    let v = cli(redis.port, &["GET", &format!("nimgate:anchor:{chain}")])?;
    serde_json::from_str(&v).ok()
}

/// Poll (up to 20 s) until `f` gives a value.
async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The anchor names the record at its seq by that line's SHA-256: the next record's prev_hash.
fn assert_names_its_record(anchor: &Value, trail: &Path) {
    let seq = anchor["seq"].as_u64().unwrap();
    let line = lines(trail)
        .into_iter()
        .find(|l| field(l, "seq") == json!(seq))
        .unwrap();
    assert_eq!(
        anchor["hash"].as_str().unwrap(),
        hex::encode(sha2::Sha256::digest(line.as_bytes())),
        "{anchor}"
    );
}

/// Write `lines[..keep]` to `dir/<name>` (a copy of the trail with its tail cut).
fn cut_copy(dir: &Path, name: &str, all: &[String], keep: usize) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, all[..keep].join("\n") + "\n").unwrap();
    p
}

/// The three outcomes against one anchor source: the untouched trail passes, the trail cut
/// after the anchored seq fails naming the chain and both seqs (text and JSON), an edited
/// record fails as before.
fn check_outcomes(dir: &Path, trail: &Path, chain: &str, source_args: &[&str]) {
    let all = lines(trail);
    let last = field(all.last().unwrap(), "seq").as_u64().unwrap();
    let (code, out, err) = verify(source_args, trail);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("chain {chain}: anchored at seq {last}")) && out.contains("reached"),
        "{out}"
    );
    // Cut the last two records: the chain still links, but ends before its anchor.
    let cut = cut_copy(dir, "cut.jsonl", &all, all.len() - 2);
    let (code, out, _) = verify(source_args, &cut);
    assert_eq!(code, Some(1), "{out}");
    let want = format!("BROKEN: chain {chain}: anchored at seq {last} (");
    assert!(out.contains(&want), "{out}");
    assert!(
        out.contains(&format!(
            "the trail ends at seq {}: records were cut from the end",
            last - 2
        )),
        "{out}"
    );
    let mut json_args = source_args.to_vec();
    json_args.push("--json");
    let (code, out, _) = verify(&json_args, &cut);
    assert_eq!(code, Some(1));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    let c = &v["anchors"]["chains"][0];
    assert_eq!(
        (
            c["chain"].as_str(),
            c["status"].as_str(),
            c["anchored_seq"].as_u64(),
            c["trail_last_seq"].as_u64()
        ),
        (Some(chain), Some("truncated"), Some(last), Some(last - 2)),
        "{v}"
    );
    // Without --anchors the cut trail still verifies: that is the gap anchoring closes.
    assert_eq!(verify(&[], &cut).0, Some(0));
    // The anchored (last) record edited: nothing links to it, so the chain alone cannot tell;
    // its anchor can.
    let mut edited = all.clone();
    let n = edited.len() - 1;
    edited[n] = edited[n].replacen("\"ts\":\"2", "\"ts\":\"1", 1);
    let ed = cut_copy(dir, "edited-last.jsonl", &edited, edited.len());
    assert_eq!(verify(&[], &ed).0, Some(0));
    let (code, out, _) = verify(source_args, &ed);
    assert_eq!(code, Some(1));
    assert!(
        out.contains(&format!("chain {chain}: anchored at seq {last}"))
            && out.contains("the record was edited"),
        "{out}"
    );
    // An edited record fails as before (with or without anchors).
    let mut edited = all.clone();
    let i = edited
        .iter()
        .position(|l| l.contains("\"event\":\"use\""))
        .unwrap();
    edited[i] = edited[i].replace("\"method\":\"POST\"", "\"method\":\"GET\"");
    let ed = cut_copy(dir, "edited.jsonl", &edited, edited.len());
    let (code, out, _) = verify(source_args, &ed);
    assert_eq!(code, Some(1));
    assert!(out.contains("was edited"), "{out}");
}

/// A gateway (the built binary, ready) anchoring to `redis` every second, its trail synced every
/// `fsync_interval`; `[ratelimit] backend` stays local: anchoring uses the connection only.
/// (its temp dir, the process, the trail).
async fn redis_gateway(redis: &Redis, fsync_interval: &str) -> (tempfile::TempDir, Proc, PathBuf) {
    let (_nim, nim) = fake_nim(vec![NIM_KEY.into()], Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        nim,
        &file_secret(dir.path()),
        &format!(
            "fsync_interval = \"{fsync_interval}\"\nanchor = \"redis\"\nanchor_interval = \"1s\""
        ),
        &format!("[ratelimit]\nredis_url = \"{}\"", redis.url()),
    );
    let p = spawn_serve(&cfg, Some("info"));
    wait_ready(p.admin).await;
    let trail = dir.path().join("audit.jsonl");
    (dir, p, trail)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_anchors_pass_an_intact_trail_and_catch_a_cut_tail() {
    let redis = Redis::start();
    let (dir, mut p, trail) = redis_gateway(&redis, "50ms").await;
    chats(p.gw, 3).await;
    let chain = chain_of(&trail);
    // start, secret_rotate, 3 × (use, done): the anchor reaches the last while the gateway runs.
    let l = last_seq_after(&trail, 3).await;
    assert_eq!(l, 7);
    let a = wait_for("an anchor at the last seq", || {
        redis_anchor(&redis, &chain).filter(|a| a["seq"] == json!(l))
    })
    .await;
    assert_eq!(a["chain"], json!(chain));
    assert_names_its_record(&a, &trail);
    let (_, metrics) = get_admin(p.admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains(&format!("nimgate_audit_anchor_seq {l}"))
            && !metrics.contains("nimgate_audit_anchor_writes_total{result=\"ok\"} 0"),
        "{metrics}"
    );
    // More traffic, then a clean stop: the final anchor is the trail's last record.
    chats(p.gw, 2).await;
    stop(&mut p);
    let all = lines(&trail);
    let last = field(all.last().unwrap(), "seq");
    let a = redis_anchor(&redis, &chain).unwrap();
    assert_eq!(a["seq"], last, "final anchor at shutdown");
    assert_names_its_record(&a, &trail);
    check_outcomes(dir.path(), &trail, &chain, &["--anchors", &redis.url()]);
    // The same anchor exported to a file (what `redis-cli GET` prints) checks the same way.
    let export = dir.path().join("anchors.json");
    std::fs::write(
        &export,
        cli(redis.port, &["GET", &format!("nimgate:anchor:{chain}")]).unwrap(),
    )
    .unwrap();
    let file_arg = format!("file:{}", export.display());
    check_outcomes(dir.path(), &trail, &chain, &["--anchors", &file_arg]);
    // Another gateway's anchor in the same store: its chain is not in this trail, which fails
    // unless the check is limited to this gateway's instance.
    let other = json!({"chain": "pod-z-0a1b2c3d", "seq": 3, "hash": "0".repeat(64), "at": "2026-12-02T17:00:00.000Z"});
    cli(
        redis.port,
        &["SET", "nimgate:anchor:pod-z-0a1b2c3d", &other.to_string()],
    )
    .unwrap();
    let (code, out, _) = verify(&["--anchors", &redis.url()], &trail);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("chain pod-z-0a1b2c3d: anchored at seq 3")
            && out.contains("no record of this chain"),
        "{out}"
    );
    let instance = chain.rsplit_once('-').unwrap().0.to_string();
    let (code, out, _) = verify(
        &["--anchors", &redis.url(), "--anchors-instance", &instance],
        &trail,
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("pod-z"), "{out}");
    // Bad sources are usage errors, an unreachable store is "unavailable".
    let (code, _, err) = verify(&["--anchors", "s3://bucket"], &trail);
    assert_eq!(code, Some(64), "{err}");
    let (_sock, refused) = refused_addr();
    let (code, _, err) = verify(&["--anchors", &format!("redis://{refused}/0")], &trail);
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("cannot read anchors from redis"), "{err}");
    let (code, _, err) = verify(&["--anchors", "file:/nonexistent/anchors.json"], &trail);
    assert_eq!(code, Some(66), "{err}");
}

/// Only a synced head is anchored: with `fsync_interval = "1h"` nothing is synced while the
/// gateway runs, so no anchor is written however many ticks pass; the flush at shutdown syncs
/// the trail, and the final anchor follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsynced_head_is_never_anchored() {
    let redis = Redis::start();
    let (_dir, mut p, trail) = redis_gateway(&redis, "1h").await;
    chats(p.gw, 2).await;
    let chain = chain_of(&trail);
    // Three ticks pass with records written but not synced.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        redis_anchor(&redis, &chain),
        None,
        "an unsynced head was anchored"
    );
    let (_, metrics) = get_admin(p.admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("nimgate_audit_anchor_writes_total{result=\"ok\"} 0"),
        "{metrics}"
    );
    stop(&mut p);
    let a = redis_anchor(&redis, &chain).expect("the final anchor after the flush");
    assert_eq!(a["seq"], field(lines(&trail).last().unwrap(), "seq"));
}

/// Redis down: requests are served as before, the failed writes are counted and recorded once
/// (`anchor_failure`), and anchoring resumes by itself when Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_never_fails_requests_and_anchoring_resumes() {
    let mut redis = Redis::start();
    let port = redis.port;
    let (_dir, mut p, trail) = redis_gateway(&redis, "50ms").await;
    redis.kill();
    chats(p.gw, 3).await;
    let admin = p.admin;
    let errors = || async move {
        let (_, m) = get_admin(admin, "/metrics").await.unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("nimgate_audit_anchor_writes_total{result=\"error\"} "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    for _ in 0..100 {
        if errors().await >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(errors().await >= 2, "failed anchor writes are counted");
    chats(p.gw, 1).await;
    let chain = chain_of(&trail);
    let l = last_seq_after(&trail, 4).await;
    let back = Redis::start_on(port).expect("redis restarts on its port");
    // Caught up: an anchor at or past everything written before the restart.
    let a = wait_for("anchoring to resume", || {
        redis_anchor(&back, &chain).filter(|a| a["seq"].as_u64() >= Some(l))
    })
    .await;
    assert_names_its_record(&a, &trail);
    stop(&mut p);
    let failures: Vec<String> = lines(&trail)
        .into_iter()
        .filter(|l| l.contains("\"event\":\"anchor_failure\""))
        .collect();
    assert_eq!(failures.len(), 1, "one record per outage: {failures:?}");
    let f: Value = serde_json::from_str(&failures[0]).unwrap();
    assert!(
        f["reason"]
            .as_str()
            .unwrap()
            .starts_with("redis SET nimgate:anchor:"),
        "{f}"
    );
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .starts_with("redis redis://127.0.0.1:"),
        "{f}"
    );
    let (code, out, _) = verify(&["--anchors", &back.url()], &trail);
    assert_eq!(code, Some(0), "{out}");
}

const KEY_POLICY: &str = "path \"secret/data/nim/prod\" { capabilities = [\"read\"] }\n";
/// The policy deploy/vault ships for the anchor path.
const ANCHOR_POLICY: &str = include_str!("../deploy/vault/nimgate-anchor-policy.hcl");
const READER_POLICY: &str =
    "path \"secret/metadata/nimgate/anchors\" { capabilities = [\"list\"] }\n\
     path \"secret/data/nimgate/anchors/*\" { capabilities = [\"read\"] }\n";

/// Vault (OpenBao): the gateway's token may read its key and write anchors under the one path,
/// nothing else; the anchors are KV v2 secrets `secret/nimgate/anchors/<chain id>`, read back by
/// `verify --anchors vault:…` with a token that may only list and read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_anchors_under_a_policy_for_that_path_only() {
    let Some(bao) = Bao::dev().await else { return };
    bao.kv2_put("nim/prod", json!({"api_key": NIM_KEY})).await;
    bao.policy("nimgate", KEY_POLICY).await;
    bao.policy("nimgate-anchors", ANCHOR_POLICY).await;
    bao.policy("anchor-reader", READER_POLICY).await;
    let policies = json!(["nimgate", "nimgate-anchors"]);
    let gw_token = bao.token(json!({"policies": policies, "ttl": "1h"})).await;
    let reader = bao
        .token(json!({"policies": ["anchor-reader"], "ttl": "1h"}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (gw_file, reader_file) = (dir.path().join("gw-token"), dir.path().join("reader-token"));
    std::fs::write(&gw_file, format!("{}\n", gw_token.token)).unwrap();
    std::fs::write(&reader_file, format!("{}\n", reader.token)).unwrap();
    // The policy allows that path only: anything else of the mount is refused to this token.
    let other = Some(json!({"data": {"x": 1}}));
    let (s, _) = http(
        &bao.addr,
        Some(&gw_token.token),
        None,
        "POST",
        "secret/data/nimgate/elsewhere",
        other,
    )
    .await;
    assert_eq!(s, 403);
    let secret = format!(
        "[secret]\nsource = \"vault\"\naddress = \"{}\"\nmount = \"secret\"\npath = \"nim/prod\"\nfield = \"api_key\"\n\
         [secret.auth]\nmethod = \"token\"\ntoken_file = \"{}\"",
        bao.addr,
        gw_file.display()
    );
    let (_nim, nim) = fake_nim(vec![NIM_KEY.into()], Duration::ZERO).await;
    let cfg = config(
        dir.path(),
        nim,
        &secret,
        "fsync_interval = \"50ms\"\nanchor = \"vault\"\nanchor_interval = \"1s\"\nanchor_vault_path = \"secret/nimgate/anchors\"",
        "",
    );
    let mut p = spawn_serve(&cfg, Some("info"));
    wait_ready(p.admin).await;
    chats(p.gw, 3).await;
    let trail = dir.path().join("audit.jsonl");
    let chain = chain_of(&trail);
    let l = last_seq_after(&trail, 3).await;
    let path = format!("secret/data/nimgate/anchors/{chain}");
    let mut read = None;
    for _ in 0..200 {
        let (s, v) = bao.api("GET", &path, None).await;
        if s == 200 && v["data"]["data"]["seq"].as_u64() >= Some(l) {
            read = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = read.expect("an anchor in Vault");
    assert_names_its_record(&v["data"]["data"], &trail);
    stop(&mut p);
    let (_, v) = bao.api("GET", &path, None).await;
    let a = &v["data"]["data"];
    assert_eq!(
        a["seq"],
        field(lines(&trail).last().unwrap(), "seq"),
        "final anchor"
    );
    assert!(
        v["data"]["metadata"]["version"].as_u64() >= Some(2),
        "each anchor a new version: {v}"
    );
    let source = format!("vault:{}/secret/nimgate/anchors", bao.addr);
    let token_arg = reader_file.display().to_string();
    check_outcomes(
        dir.path(),
        &trail,
        &chain,
        &["--anchors", &source, "--anchors-token-file", &token_arg],
    );
    // A Vault source needs a token file; the gateway's token may not list the anchors.
    let (code, _, err) = verify(&["--anchors", &source], &trail);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--anchors-token-file"), "{err}");
    let gw_arg = gw_file.display().to_string();
    let (code, _, err) = verify(
        &["--anchors", &source, "--anchors-token-file", &gw_arg],
        &trail,
    );
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains("403") && !err.contains(&gw_token.token),
        "{err}"
    );
}
