#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! The audit trail: completeness under kill -9, fail-closed on write errors (and recovery),
//! tamper evidence (`audit verify`), rotation and restarts keep the chain, usage tokens.

mod common;

use common::bin::*;
use common::*;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn verify(files: &[&std::path::Path]) -> (bool, String) {
    let (code, out) = verify_with(&[], files);
    (code == Some(0), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_use_record() {
    let dir = tempfile::tempdir().unwrap();
    let (nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::ZERO).await;
    std::fs::write(dir.path().join("key"), NIM_KEY).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let cfg = dir.path().join("c.toml");
    // Port 0; the bound address is read back from the binary's "serving" line.
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{nim_addr}\"\n[secret]\nsource = \"file\"\npath = \"{}\"\n[[clients]]\nid = \"a\"\nkey_sha256 = \"{}\"\n[audit]\npath = \"{}\"\nfsync = \"never\"\n",
            dir.path().join("key").display(),
            nimgate::auth::key_digest_hex(CLIENT_KEY),
            audit.display()
        ),
    )
    .unwrap();
    let mut p = spawn_serve(&cfg, None);
    let url = format!("http://{}/v1/chat/completions", p.gw);
    let mut up = false;
    for _ in 0..250 {
        if client()
            .request(post(&url, Some(CLIENT_KEY), &chat_body(false)))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..200 {
                if c.request(post(&url, Some(CLIENT_KEY), &chat_body(false)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }));
    }
    let nim2 = nim.clone();
    assert!(eventually(|| nim2.requests.load(Ordering::Relaxed) > 300).await);
    kill_pid(p.child.id(), "-KILL");
    let _ = p.child.wait();
    for t in tasks {
        let _ = t.await;
    }
    let seen: HashSet<String> = nim
        .seen()
        .iter()
        .map(|s| s.headers["x-request-id"].to_str().unwrap().to_string())
        .collect();
    let used: HashSet<String> = read_audit(&audit)
        .iter()
        .filter(|r| r["event"] == "use")
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    assert!(seen.len() > 300, "load too small: {}", seen.len());
    let missing: Vec<_> = seen.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "{} upstream requests without a use record",
        missing.len()
    );
    let (ok, out) = verify(&[&audit]);
    assert!(ok, "{out}");
}

#[tokio::test]
async fn unwritable_audit_fails_closed_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("audit.jsonl");
    // Writes to /dev/full fail with ENOSPC: a real "disk full", no root-only tricks needed.
    std::os::unix::fs::symlink("/dev/full", &link).unwrap();
    let gw = start_with(
        Opts::default()
            .audit_path(link.clone())
            .audit("max_wait = \"500ms\"")
            .no_wait(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, body) = get_admin(gw.admin, "/readyz").await.unwrap();
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("\"audit\":\"failing\""), "{body}");
    for _ in 0..5 {
        let (s, v) = gw.chat().await;
        assert_eq!(s, 503);
        assert_eq!(error_code(&v), "audit_unavailable");
    }
    assert_eq!(
        gw.nim.requests.load(Ordering::Relaxed),
        0,
        "no key may leave while the audit is failing"
    );
    // The disk "frees up": the path now points at a writable file.
    let real = dir.path().join("real.jsonl");
    std::fs::write(&real, "").unwrap();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    gw.wait_ready().await;
    let (s, _) = gw.chat().await;
    assert_eq!(s, 200);
    // Stopping flushes the writer (a `done` record is written within a few ms otherwise).
    let _dir = gw.stop().await;
    let recs = read_audit(&real);
    let events: Vec<_> = recs
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    assert!(
        events.contains(&"audit_failure".to_string()),
        "the outage itself is on the record: {events:?}"
    );
    assert!(
        events.contains(&"start".to_string()),
        "records queued during the outage were kept: {events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| *e == "denied").count(),
        5,
        "the refused requests are recorded: {events:?}"
    );
    assert!(events.contains(&"use".to_string()) && events.contains(&"done".to_string()));
    let (ok, out) = verify(&[&real]);
    assert!(ok, "{out}");
}

#[tokio::test]
async fn verify_detects_edits_deletions_and_reordering() {
    let (path, _dir) = trail_of(4).await;
    let (ok, out) = verify(&[&path]);
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 8);
    let check = |lines: Vec<String>, want: &str| {
        let p = path.with_extension("tampered");
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        let (ok, out) = verify(&[&p]);
        assert!(!ok, "tampering not detected ({want}): {out}");
        assert!(out.contains(want), "expected {want:?} in {out}");
    };
    let owned: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    // Edit: change the status of line 5 → line 6's prev_hash no longer matches.
    let mut edited = owned.clone();
    edited[4] = edited[4]
        .replacen("\"status\":200", "\"status\":201", 1)
        .replacen("team-a", "team-b", 1);
    assert_ne!(edited[4], owned[4]);
    check(edited, ":6: prev_hash does not match");
    // Deletion of line 4.
    let mut deleted = owned.clone();
    deleted.remove(3);
    check(deleted, ":4: records missing");
    // Reordering lines 3 and 4.
    let mut reordered = owned.clone();
    reordered.swap(2, 3);
    check(reordered, ":3: out of order: expected seq 2, found 3; the skipped record(s) are elsewhere in the files (records reordered)");
    // Deleting the last line cannot be seen from the file alone, but truncating mid-line can.
    let p = path.with_extension("torn");
    std::fs::write(&p, &text[..text.len() - 10]).unwrap();
    assert!(!verify(&[&p]).0);
}

#[tokio::test]
async fn chain_continues_across_restarts_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    for round in 0..2 {
        let gw = start_with(
            Opts::default()
                .audit_path(path.clone())
                .audit("max_bytes = 4000\nkeep = 50\nfsync = \"batch\""),
        )
        .await;
        for _ in 0..10 {
            let (s, _) = send_json(post(
                &gw.url("/v1/chat/completions"),
                Some(CLIENT_KEY),
                &chat_body(round == 1),
            ))
            .await;
            assert_eq!(s, 200);
        }
        gw.stop().await;
    }
    let mut files: Vec<std::path::PathBuf> = (1..50)
        .map(|n| nimgate::audit::rotated_name(&path, n))
        .filter(|p| p.exists())
        .collect();
    assert!(files.len() >= 3, "expected rotation, got {files:?}");
    for f in &files {
        assert!(
            std::fs::metadata(f).unwrap().len() <= 4000,
            "{f:?} over max_bytes"
        );
    }
    files.reverse();
    files.push(path.clone());
    let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let (ok, out) = verify(&refs);
    assert!(ok, "{out}");
    assert!(out.contains("OK:"), "{out}");
    // Two starts, one chain: seq never restarts.
    let all: Vec<serde_json::Value> = files.iter().flat_map(|f| read_audit(f)).collect();
    let starts = all.iter().filter(|r| r["event"] == "start").count();
    assert_eq!(starts, 2);
    for w in all.windows(2) {
        assert_eq!(
            w[1]["seq"].as_u64().unwrap(),
            w[0]["seq"].as_u64().unwrap() + 1
        );
    }
    // Out-of-order file arguments are reported.
    let mut wrong = refs.clone();
    wrong.swap(0, 1);
    assert!(!verify(&wrong).0);
    // Streaming responses (round 2) carry usage from the final SSE chunk.
    let streamed: Vec<_> = all
        .iter()
        .filter(|r| r["event"] == "done" && r["bytes_out"].as_u64().unwrap_or(0) > 500)
        .collect();
    assert_eq!(streamed.len(), 10);
    assert!(streamed
        .iter()
        .all(|r| r["usage"]["completion_tokens"] == 5));
}

#[tokio::test]
async fn denied_requests_have_no_key_fields() {
    let gw = start_with(Opts::default().client("rpm = 60\nburst = 1")).await;
    gw.chat().await;
    let (s, v) = gw.chat().await;
    assert_eq!(s, 429, "{v}");
    send_json(post(
        &gw.url("/v1/chat/completions"),
        Some("bad"),
        &chat_body(false),
    ))
    .await;
    let denied = gw.audit_events("denied").await;
    assert_eq!(denied.len(), 2);
    assert_eq!(denied[0]["reason"], "rate_limit_exceeded");
    assert_eq!(denied[0]["client_id"], "team-a");
    assert_eq!(denied[1]["reason"], "unknown_key");
    for d in &denied {
        assert!(d.get("key_fingerprint").is_none() && d.get("key_version").is_none());
    }
    gw.stop().await;
}

/// A gateway's audit file after `n` chat requests, the gateway stopped (and its directory).
async fn trail_of(n: usize) -> (std::path::PathBuf, tempfile::TempDir) {
    let gw = start().await;
    for _ in 0..n {
        gw.chat().await;
    }
    let path = gw.audit_file.clone();
    (path, gw.stop().await)
}

fn verify_with(args: &[&str], files: &[&std::path::Path]) -> (Option<i32>, String) {
    let mut a = vec!["audit", "verify"];
    a.extend_from_slice(args);
    let out = run_bin(&a, files);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn verify_options_empty_json_expect_last_seq_and_reorder_vs_delete() {
    let (path, dir) = trail_of(3).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let last: u64 = serde_json::from_str::<serde_json::Value>(lines.last().unwrap()).unwrap()
        ["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(last as usize, lines.len() - 1);

    // --json on a good chain: one object with the counts.
    let (code, out) = verify_with(&["--json"], &[&path]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["records"], lines.len() as u64);
    assert_eq!(v["last_seq"], last);
    assert_eq!(v["errors"], serde_json::json!([]));

    // --expect-last-seq: the right number passes; a cut tail (last line gone, chain still
    // consistent) is caught only with it.
    let (code, out) = verify_with(&["--expect-last-seq", &last.to_string()], &[&path]);
    assert_eq!(code, Some(0), "{out}");
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    assert_eq!(
        verify_with(&[], &[&cut]).0,
        Some(0),
        "a cut tail alone verifies"
    );
    let (code, out) = verify_with(&["--expect-last-seq", &last.to_string()], &[&cut]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "the last record has seq {}, expected {last}",
            last - 1
        )),
        "{out}"
    );

    // Empty: refused unless --allow-empty.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let (code, out) = verify_with(&[], &[&empty]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no audit records"), "{out}");
    assert_eq!(verify_with(&["--allow-empty"], &[&empty]).0, Some(0));

    // Reordered (lines 3 and 4 swapped) vs deleted (line 3 removed), in --json.
    let json_errors = |ls: Vec<String>, name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, ls.join("\n") + "\n").unwrap();
        let (code, out) = verify_with(&["--json"], &[&p]);
        assert_eq!(code, Some(1), "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["ok"], false);
        v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let mut reordered = lines.clone();
    reordered.swap(2, 3);
    let errs = json_errors(reordered, "reordered.jsonl");
    assert!(
        errs[0].ends_with(":3: out of order: expected seq 2, found 3; the skipped record(s) are elsewhere in the files (records reordered)"),
        "{errs:?}"
    );
    assert!(errs.iter().all(|e| !e.contains("deleted")), "{errs:?}");
    let mut deleted = lines.clone();
    deleted.remove(2);
    let errs = json_errors(deleted, "deleted.jsonl");
    assert_eq!(errs.len(), 1, "one deletion, one error: {errs:?}");
    assert!(
        errs[0].ends_with(":3: records missing: expected seq 2, found 3 (1 record(s) deleted)"),
        "{errs:?}"
    );
}
