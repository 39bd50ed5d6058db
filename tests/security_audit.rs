#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Security suite, section 11: the audit trail under attack, and connection budgets in front of
//! authentication.
//!
//! Part of the hostile-input security suite, split by section into tests/security_*.rs. An
//! unauthenticated peer must not be able to turn fail-closed audit into an outage (issue 12,
//! finding 1): its refusals are budgeted per address and summarised, the text it chooses is cut
//! short or not recorded, and keyed requests keep working. Idle HTTP/2 connections and one
//! address's connections are capped (finding 6).

mod common;

use common::h2frames::{self, Conn};
use common::raw::{self, H1};
use common::*;
use std::time::Duration;

#[tokio::test]
async fn unauthenticated_flood_is_budgeted_summarised_and_keyed_requests_still_pass() {
    let gw = start_with(Opts::default().limits("unauthenticated_rpm_per_ip = 5")).await;
    let long = format!("/v1/{}", "A".repeat(4000));
    let mut c = H1::connect(gw.addr).await;
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let req = format!(
            "GET {long} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ngk_wrong\r\nX-Request-Id: attacker-chosen-id\r\n\r\n"
        );
        assert!(c.send(req.as_bytes()).await);
        let r = c
            .response(Duration::from_secs(5))
            .await
            .expect("a response");
        if r.status == 429 {
            assert_eq!(r.error_code(), "rate_limit_exceeded");
        }
        statuses.push(r.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        35,
        "{statuses:?}"
    );
    // The same address with a valid key is not locked out (and its `use` record is written).
    let (status, _) = gw.chat().await;
    assert_eq!(status, 200);

    let audit_file = gw.audit_file.clone();
    let _dir = gw.stop().await;
    let recs = read_audit(&audit_file);
    let denied: Vec<_> = recs.iter().filter(|r| r["event"] == "denied").collect();
    assert_eq!(
        denied.len(),
        5,
        "one record per refusal only within the budget"
    );
    for d in &denied {
        assert!(
            d.get("request_id").is_none(),
            "client request id recorded: {d}"
        );
        assert!(d["path"].as_str().unwrap().chars().count() <= 128, "{d}");
    }
    let text = std::fs::read_to_string(&audit_file).unwrap();
    assert!(!text.contains("attacker-chosen-id"));
    // The flood is still in the trail: counts per address and reason.
    let summed: u64 = recs
        .iter()
        .filter(|r| r["event"] == "denied_summary")
        .inspect(|r| {
            assert_eq!(r["remote_addr"], "127.0.0.1");
            assert_eq!(r["reason"], "unknown_key");
        })
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(summed, 35);
    assert!(recs.iter().any(|r| r["event"] == "use"));
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let gw = start_with(Opts::default().limits("max_connections_per_ip = 2")).await;
    let mut a = H1::connect(gw.addr).await;
    let mut b = Conn::open(gw.addr).await; // an idle HTTP/2 connection counts too
                                           // Both served (the h2 one answers our SETTINGS).
    assert!(a.send(&raw::h1_get("/v1/models", "")).await);
    assert_eq!(
        a.response(Duration::from_secs(5)).await.unwrap().status,
        200
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    assert!(b.next(deadline).await.is_some());
    let mut third = H1::connect(gw.addr).await;
    let _ = third.send(&raw::h1_get("/v1/models", "")).await;
    assert!(
        third.response(Duration::from_secs(3)).await.is_none(),
        "a third connection from the same address was served"
    );
    assert!(third.closed_within(Duration::from_secs(5)).await);
    // A slot comes back when a connection closes.
    drop(a);
    let mut ok = None;
    for _ in 0..50 {
        let mut c = H1::connect(gw.addr).await;
        let _ = c.send(&raw::h1_get("/v1/models", "")).await;
        if let Some(r) = c.response(Duration::from_secs(2)).await {
            ok = Some(r.status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ok, Some(200));
    drop(b);
    gw.stop().await;
}

#[tokio::test]
async fn idle_h2_connection_is_closed_after_idle_timeout() {
    let gw = start_with(Opts::default().limits("idle_timeout = \"300ms\"")).await;
    let mut c = Conn::open(gw.addr).await;
    // One request, then nothing (PINGs are answered by `next`): the connection must not stay.
    assert!(
        c.send(&h2frames::get(
            1,
            "/v1/models",
            "gw",
            &[("authorization", &format!("Bearer {CLIENT_KEY}"))]
        ))
        .await
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut status = None;
    while let Some(f) = c.next(deadline).await {
        if f.ty == h2frames::HEADERS && f.stream == 1 {
            status = h2frames::status(&f.payload);
        }
    }
    assert_eq!(status, Some(200));
    assert!(
        c.eof,
        "idle HTTP/2 connection still open after 10 s (idle_timeout = 300ms)"
    );
    gw.stop().await;
}

fn verify(args: &[&str], files: &[&std::path::Path]) -> (bool, String) {
    let mut a = vec!["audit", "verify"];
    a.extend_from_slice(args);
    let out = bin::run_bin(&a, files);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Finding 5: with `audit.chain_key_file`, links are HMAC-SHA256 under that key; an edited
/// middle record with every later link re-hashed with plain SHA-256 (what anyone who can write
/// the file can do) no longer verifies.
#[tokio::test]
async fn keyed_chain_resists_a_rewrite_with_plain_sha256() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("chain.key");
    let secret = "chain-key-0123456789abcdef-never-logged";
    std::fs::write(&key_file, format!("{secret}\n")).unwrap();
    let gw =
        start_with(Opts::default().audit(format!("chain_key_file = \"{}\"", key_file.display())))
            .await;
    for _ in 0..3 {
        assert_eq!(gw.chat().await.0, 200);
    }
    let audit = gw.audit_file.clone();
    let dir = gw.stop().await;
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains(secret));
    let start: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(start["event"], "start");
    assert!(start["chain_key"]
        .as_str()
        .unwrap()
        .starts_with("hmac-sha256:"));
    let kf = key_file.to_str().unwrap();
    let (ok, out) = verify(&["--key-file", kf], &[&audit]);
    assert!(ok, "{out}");
    let (ok, out) = verify(&[], &[&audit]);
    assert!(!ok && out.contains("--key-file"), "{out}");

    // The attacker's rewrite: change record 2, then re-link everything after it with SHA-256.
    use sha2::Digest;
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    assert!(lines.len() > 4);
    let v: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    let old_path = v["path"].as_str().unwrap().to_string();
    lines[2] = lines[2].replacen(&old_path, "/v1/forged", 1);
    for i in 3..lines.len() {
        let v: serde_json::Value = serde_json::from_str(&lines[i]).unwrap();
        let old = v["prev_hash"].as_str().unwrap().to_string();
        let new = hex::encode(sha2::Sha256::digest(lines[i - 1].as_bytes()));
        lines[i] = lines[i].replacen(&old, &new, 1);
    }
    let forged = dir.path().join("forged.jsonl");
    std::fs::write(&forged, lines.join("\n") + "\n").unwrap();
    let (ok, out) = verify(&["--key-file", kf], &[&forged]);
    assert!(!ok, "a rewritten chain passed keyed verification: {out}");
    assert!(out.contains("forged.jsonl:4"), "{out}");
    // A wrong key is named as such.
    let other = keys.path().join("other.key");
    std::fs::write(&other, "another-key-0123456789abcdef").unwrap();
    let (ok, out) = verify(&["--key-file", other.to_str().unwrap()], &[&audit]);
    assert!(!ok && out.contains("another key"), "{out}");
}

/// Finding 5 (and 15): a garbage last line used to block the restart ("last audit line is not a
/// record"). It is moved to `<path>.quarantine`, recorded, and the chain continues.
#[tokio::test]
async fn garbage_last_audit_line_is_quarantined_and_the_chain_continues() {
    let keep = tempfile::tempdir().unwrap();
    let audit = keep.path().join("audit.jsonl");
    let gw = start_with(Opts::default().audit_path(&audit)).await;
    assert_eq!(gw.chat().await.0, 200);
    gw.stop().await;
    let before = read_audit(&audit);
    let last_seq = before.last().unwrap()["seq"].as_u64().unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&audit)
            .unwrap();
        f.write_all(b"{\"seq\": garbage written by a broken disk\n")
            .unwrap();
    }
    let gw = start_with(Opts::default().audit_path(&audit)).await;
    assert_eq!(gw.chat().await.0, 200);
    gw.stop().await;
    let q = std::fs::read_to_string(keep.path().join("audit.jsonl.quarantine")).unwrap();
    assert!(q.contains("garbage written by a broken disk"));
    let recs = read_audit(&audit);
    let start2 = &recs[before.len()];
    assert_eq!(start2["event"], "start");
    assert_eq!(
        start2["seq"].as_u64().unwrap(),
        last_seq + 1,
        "the chain continued"
    );
    assert_eq!(recs[before.len() + 1]["event"], "audit_quarantine");
    let (ok, out) = verify(&[], &[&audit]);
    assert!(ok, "{out}");
}

/// Finding 1, disk headroom: below `audit.min_free_bytes` free on the audit volume, `denied`
/// records are only counted (`denied_summary`) while `use` records are still written.
#[tokio::test]
async fn low_disk_headroom_sheds_denied_records_but_not_use() {
    let gw = start_with(Opts::default().audit(format!("min_free_bytes = {}", i64::MAX))).await;
    for _ in 0..3 {
        assert_eq!(gw.chat().await.0, 200);
        let (status, _, _) = send(get(&gw.url("/v1/models"), Some("ngk_wrong"))).await;
        assert_eq!(status, 401);
    }
    let audit_file = gw.audit_file.clone();
    let _dir = gw.stop().await;
    let recs = read_audit(&audit_file);
    let count = |e: &str| recs.iter().filter(|r| r["event"] == e).count();
    assert_eq!(count("use"), 3);
    assert_eq!(
        count("denied"),
        0,
        "denied records written with no headroom"
    );
    let summed: u64 = recs
        .iter()
        .filter(|r| r["event"] == "denied_summary")
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(summed, 3);
}
