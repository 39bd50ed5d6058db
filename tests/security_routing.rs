#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Security suite, section 4: routing (the key only ever goes to the configured upstream).
//!
//! Part of the hostile-input security suite (DESIGN.md "Security invariants" 1–5 and 8), split
//! by section into tests/security_*.rs. Every case sends its attack over a real loopback socket —
//! raw HTTP/1.1 bytes or hand-written HTTP/2 frames — and asserts the safe outcome: the status the
//! client gets, whether the connection is closed, and exactly what the fake NIM (and, for
//! routing, a canary listener) received. Shared raw-socket and h2 helpers live in tests/common/.

mod common;

use common::checks::*;
use common::h2frames as h2;
use common::raw::*;
use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A listener that must never be contacted: counts connections.
struct Canary {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn canary() -> Canary {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    Canary { addr, hits }
}

#[tokio::test]
async fn absolute_form_host_connect_and_redirects_never_reach_another_host() {
    let gw = start().await;
    let c = canary().await;
    let ca = c.addr;
    let a = auth_line();
    let mut failures = Vec::new();

    // Absolute-form targets naming the canary (http and https), with a matching Host.
    for (i, scheme) in ["http", "https"].iter().enumerate() {
        let body = chat_body(false);
        let req = format!(
            "POST {scheme}://{ca}/v1/chat/completions?route=abs{i} HTTP/1.1\r\nHost: {ca}\r\n{a}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = exchange(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
        let st = r.as_ref().map(|r| r.status);
        if !matches!(st, Some(200 | 400)) {
            failures.push(format!("absolute-form {scheme}: {st:?}"));
        }
        for s in seen_with(&gw, &format!("route=abs{i}")) {
            assert_eq!(seen_authority(&s), gw.nim_addr.to_string());
            assert_eq!(seen_path(&s), "/v1/chat/completions");
            assert_only_our_credential(&s, "absolute-form");
        }
    }
    // Spoofed Host / X-Forwarded-Host / Forwarded.
    let r = exchange(
        gw.addr,
        format!(
            "GET /v1/models?route=host HTTP/1.1\r\nHost: {ca}\r\nX-Forwarded-Host: {ca}\r\nForwarded: host={ca};proto=https\r\n{a}\r\n"
        )
        .as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(r.as_ref().map(|r| r.status), Some(200), "spoofed Host");
    let s = seen_with(&gw, "route=host");
    assert_eq!(s.len(), 1);
    assert_eq!(seen_authority(&s[0]), gw.nim_addr.to_string());
    assert!(s[0].headers.get("forwarded").is_none());

    // CONNECT to the canary, authenticated and not; then try to use the "tunnel".
    for (who, auth) in [("authenticated", a.as_str()), ("anonymous", "")] {
        let mut conn = H1::connect(gw.addr).await;
        conn.send(format!("CONNECT {ca} HTTP/1.1\r\nHost: {ca}\r\n{auth}\r\n").as_bytes())
            .await;
        let r = conn.response(Duration::from_secs(3)).await;
        let want = if auth.is_empty() { 401 } else { 405 };
        match &r {
            Some(r) if r.status == want => {
                let code = r.error_code();
                assert!(
                    code == "method_not_allowed" || code == "invalid_api_key",
                    "{code}"
                );
            }
            other => failures.push(format!(
                "CONNECT {who}: expected {want}, got {:?}",
                other.as_ref().map(|r| r.status)
            )),
        }
        conn.send(b"GET /steal HTTP/1.1\r\nHost: canary\r\n\r\n")
            .await;
        let _ = conn.response(Duration::from_millis(500)).await;
    }
    // TRACE.
    let r = exchange(
        gw.addr,
        &h1_get("/v1/models?route=trace", "").replacen(b"GET", b"TRACE"),
        Duration::from_secs(3),
    )
    .await;
    if r.as_ref().map(|r| r.status) != Some(405) {
        failures.push(format!("TRACE: {:?}", r.map(|r| r.status)));
    }
    // h2: :authority naming the canary.
    let mut h = h2::Conn::open(gw.addr).await;
    h.send(&h2::get(
        1,
        "/v1/models?route=h2auth",
        &ca.to_string(),
        &[("authorization", &format!("Bearer {CLIENT_KEY}"))],
    ))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut h2_status = None;
    while let Some(f) = h.next(deadline).await {
        if f.ty == h2::HEADERS && f.stream == 1 {
            h2_status = h2::status(&f.payload);
            break;
        }
    }
    assert_eq!(h2_status, Some(200), "h2 :authority spoof");
    for s in seen_with(&gw, "route=h2auth") {
        assert_eq!(seen_authority(&s), gw.nim_addr.to_string());
    }
    // Upstream redirect to the canary: passed back, never followed.
    let steal = format!("http://{ca}/steal");
    let r = exchange(
        gw.addr,
        &h1_get(
            "/v1/models?route=redirect",
            &format!("x-fake-redirect: {steal}\r\n"),
        ),
        Duration::from_secs(3),
    )
    .await
    .expect("redirect response");
    assert_eq!(r.status, 302, "the redirect goes back to the client");
    assert_eq!(r.header("location"), Some(steal.as_str()));
    assert_eq!(seen_with(&gw, "route=redirect").len(), 1);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.hits.load(Ordering::SeqCst),
        0,
        "the canary was contacted: the key may have left for another host"
    );
    assert!(gw
        .nim
        .seen()
        .iter()
        .all(|s| !s.uri.contains("steal") && seen_authority(s) == gw.nim_addr.to_string()));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    gw.stop().await;
}

trait ReplaceBytes {
    fn replacen(&self, from: &[u8], to: &[u8]) -> Vec<u8>;
}

impl ReplaceBytes for Vec<u8> {
    fn replacen(&self, from: &[u8], to: &[u8]) -> Vec<u8> {
        match find(self, from) {
            Some(i) => cat(&[&self[..i], to, &self[i + from.len()..]]),
            None => self.clone(),
        }
    }
}

/// The `use` record names the model the NIM will read (last duplicate, BOM, whitespace, a body
/// over the peek arriving in pieces), and no recorded string is uncapped.
#[tokio::test]
async fn recorded_model_is_the_one_the_nim_reads_and_is_capped() {
    let gw = start().await;
    let pad = "p".repeat(200 * 1024);
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "dup",
            br#"{"model":"first","messages":[],"model":"last"}"#.to_vec(),
            Some("last"),
        ),
        (
            "bom",
            b"\xef\xbb\xbf{\"model\":\"bom-model\",\"messages\":[]}".to_vec(),
            Some("bom-model"),
        ),
        (
            "ws",
            b" \r\n\t {\"model\":\"ws-model\",\"messages\":[]}".to_vec(),
            Some("ws-model"),
        ),
        (
            "nested",
            br#"{"x":{"model":"evil"},"messages":[]}"#.to_vec(),
            None,
        ),
        (
            "big",
            format!(r#"{{"model":"big-model","messages":[{{"role":"user","content":"{pad}"}}]}}"#)
                .into_bytes(),
            Some("big-model"),
        ),
    ];
    for (tag, body, _) in &cases {
        let req = http::Request::post(gw.url(&format!("/v1/chat/completions?m={tag}")))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        let (status, _, _) = send(req).await;
        assert!(status < 500, "{tag}: {status}");
    }
    // A 200 KB model name: the NIM echoes it in its response, the `done` record must stay short.
    let huge = "h".repeat(200 * 1024);
    let (status, _, _) = send(post(
        &gw.url("/v1/chat/completions?m=huge"),
        Some(CLIENT_KEY),
        &format!(r#"{{"model":"{huge}","messages":[]}}"#),
    ))
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let uses = gw.audit_events("use").await;
    assert_eq!(uses.len(), cases.len() + 1);
    for ((tag, _, want), u) in cases.iter().zip(&uses) {
        assert_eq!(u["model"].as_str(), *want, "{tag}: {u}");
    }
    for line in gw.audit_text().lines() {
        assert!(line.len() < 4096, "an audit line of {} bytes", line.len());
    }
    gw.stop().await;
}
