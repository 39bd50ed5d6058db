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
    let gw = start_with(Opts::default().limits("max_concurrent_requests = 2")).await;
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
