#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Security suite, section 9: concurrency and rate limits.
//!
//! Part of the hostile-input security suite (DESIGN.md "Security invariants" 1–5 and 8), split
//! by section into tests/security_*.rs. Every case sends its attack over a real loopback socket —
//! raw HTTP/1.1 bytes or hand-written HTTP/2 frames — and asserts the safe outcome: the status the
//! client gets, whether the connection is closed, and exactly what the fake NIM (and, for
//! routing, a canary listener) received. Shared raw-socket and h2 helpers live in tests/common/.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use std::sync::atomic::Ordering;

fn get_with(url: &str, key: &str, extra: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(url).header("authorization", format!("Bearer {key}"));
    for (n, v) in extra {
        b = b.header(*n, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn global_concurrency_limit_answers_503_overloaded() {
    // Each client may hold both slots: the global limit is what this test is about.
    let gw = start_with(
        Opts::default().limits("max_concurrent_requests = 2\nclient_max_concurrent = 2"),
    )
    .await;
    let url = gw.url("/v1/models");
    let slow: Vec<_> = [CLIENT_KEY, CLIENT_KEY_B]
        .into_iter()
        .map(|k| {
            let req = get_with(&url, k, &[("x-fake-delay-ms", "1000")]);
            tokio::spawn(send(req))
        })
        .collect();
    assert!(eventually(|| gw.nim.requests.load(Ordering::Relaxed) == 2).await);
    let (s, h, b) = send(get(&url, Some(CLIENT_KEY))).await;
    assert_eq!(s, 503, "{}", String::from_utf8_lossy(&b));
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(error_code(&v), "overloaded");
    assert!(h.get("x-request-id").is_some());
    assert_eq!(
        gw.nim.requests.load(Ordering::Relaxed),
        2,
        "the 3rd never reached the NIM"
    );
    for t in slow {
        assert_eq!(t.await.unwrap().0, 200);
    }
    assert_eq!(
        send(get(&url, Some(CLIENT_KEY))).await.0,
        200,
        "capacity is released"
    );
    let denied = gw.audit_events("denied").await;
    assert!(denied
        .iter()
        .any(|d| d["reason"] == "overloaded" && d["status"] == 503));
    gw.stop().await;
}

#[tokio::test]
async fn per_client_concurrency_limit_answers_429() {
    let gw = start_with(Opts::default().client("max_concurrent = 1")).await;
    let url = gw.url("/v1/models");
    let slow = tokio::spawn(send(get_with(
        &url,
        CLIENT_KEY,
        &[("x-fake-delay-ms", "800")],
    )));
    assert!(eventually(|| gw.nim.requests.load(Ordering::Relaxed) == 1).await);
    let (s, _, b) = send(get(&url, Some(CLIENT_KEY))).await;
    assert_eq!(s, 429, "{}", String::from_utf8_lossy(&b));
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(error_code(&v), "concurrency_limit_exceeded");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // Another client is not affected.
    assert_eq!(send(get(&url, Some(CLIENT_KEY_B))).await.0, 200);
    assert_eq!(slow.await.unwrap().0, 200);
    assert_eq!(
        send(get(&url, Some(CLIENT_KEY))).await.0,
        200,
        "slot released"
    );
    gw.stop().await;
}

/// Issue 12, finding 2: without a `max_concurrent` of its own a client gets a quarter of the global
/// limit, so one key cannot take every slot from the others.
#[tokio::test]
async fn a_client_without_its_own_max_concurrent_cannot_take_the_global_limit() {
    let gw = start_with(Opts::default().limits("max_concurrent_requests = 8")).await;
    let url = gw.url("/v1/models");
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let req = get_with(&url, CLIENT_KEY, &[("x-fake-delay-ms", "1000")]);
            tokio::spawn(send(req))
        })
        .collect();
    assert!(eventually(|| gw.nim.requests.load(Ordering::Relaxed) == 2).await);
    let (s, _, b) = send(get(&url, Some(CLIENT_KEY))).await;
    assert_eq!(
        s,
        429,
        "a third request of one client: {}",
        String::from_utf8_lossy(&b)
    );
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(error_code(&v), "concurrency_limit_exceeded");
    assert_eq!(
        send(get(&url, Some(CLIENT_KEY_B))).await.0,
        200,
        "others are served"
    );
    for t in slow {
        assert_eq!(t.await.unwrap().0, 200);
    }
    gw.stop().await;
}

#[tokio::test]
async fn per_client_rate_limit_answers_429_with_retry_after_and_audit() {
    let gw = start_with(Opts::default().client("rpm = 60\nburst = 2")).await;
    let url = gw.url("/v1/models");
    assert_eq!(send(get(&url, Some(CLIENT_KEY))).await.0, 200);
    assert_eq!(send(get(&url, Some(CLIENT_KEY))).await.0, 200);
    let (s, h, b) = send(get(&url, Some(CLIENT_KEY))).await;
    assert_eq!(s, 429, "{}", String::from_utf8_lossy(&b));
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(error_code(&v), "rate_limit_exceeded");
    let retry: u64 = h
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(gw.nim.requests.load(Ordering::Relaxed), 2);
    assert_eq!(
        send(get(&url, Some(CLIENT_KEY_B))).await.0,
        200,
        "team-b unaffected"
    );
    let denied = gw.audit_events("denied").await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["reason"], "rate_limit_exceeded");
    assert_eq!(denied[0]["status"], 429);
    assert_eq!(denied[0]["client_id"], "team-a");
    assert!(denied[0].get("key_fingerprint").is_none());
    gw.stop().await;
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Issue 12, finding 14: with no descriptor left, `accept` fails at once every time; the admin
/// loop used to `continue` without a pause (a core at 100 %). Both loops must back off and log
/// the failure rarely.
#[tokio::test]
async fn descriptor_exhaustion_does_not_spin_the_accept_loops() {
    let dir = tempfile::tempdir().unwrap();
    let (_nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], std::time::Duration::ZERO).await;
    std::fs::write(dir.path().join("key"), NIM_KEY).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{nim_addr}\"\n[secret]\nsource = \"file\"\npath = \"{}\"\n[[clients]]\nid = \"a\"\nkey_sha256 = \"{}\"\n[audit]\npath = \"{}\"\n",
            dir.path().join("key").display(),
            nimgate::auth::key_digest_hex(CLIENT_KEY),
            dir.path().join("audit.jsonl").display()
        ),
    )
    .unwrap();
    let p = bin::spawn_serve(&cfg, Some("info"));
    bin::wait_ready(p.admin).await;
    let pid = p.child.id();
    // No descriptor left: the limit is what it has open now.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let st = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={open}:{open}"))
        .status()
        .unwrap();
    assert!(st.success());
    // Connections the kernel completes but the process cannot accept, on both listeners.
    let mut held = Vec::new();
    for addr in [p.admin, p.gw, p.admin, p.gw] {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    // A spinning loop uses the whole 2 s (200 ticks); a backed-off one next to nothing.
    assert!(used < 100, "{used} ticks of CPU in 2 s with accept failing");
    let log = p.stderr.lock().unwrap().clone();
    let lines = log.matches("accept failed").count();
    assert!(
        (1..=4).contains(&lines),
        "{lines} 'accept failed' lines in 2 s:\n{log}"
    );
    drop(held);
}
