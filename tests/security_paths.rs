#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Security suite, section 5: paths.
//!
//! Part of the hostile-input security suite (DESIGN.md "Security invariants" 1–5 and 8), split
//! by section into tests/security_*.rs. Every case sends its attack over a real loopback socket —
//! raw HTTP/1.1 bytes or hand-written HTTP/2 frames — and asserts the safe outcome: the status the
//! client gets, whether the connection is closed, and exactly what the fake NIM (and, for
//! routing, a canary listener) received. Shared raw-socket and h2 helpers live in tests/common/.

mod common;

use common::checks::*;
use common::raw::*;
use common::*;
use std::time::Duration;

#[tokio::test]
async fn path_allow_list_applies_after_normalisation() {
    let gw = start().await;
    // (raw target, allowed statuses, the path the NIM may see if forwarded)
    let cases: Vec<(&str, &[u16], Option<&str>)> = vec![
        ("/v1/../admin", &[404], None),
        ("/v1/%2e%2e/admin", &[404], None),
        ("/v1/%2E%2E%2Fadmin", &[400], None),
        ("/v1%2Fmodels", &[400], None),
        ("/v1%2fmodels", &[400], None),
        ("//v1/models", &[200, 400, 404], Some("/v1/models")),
        ("/v1;/models", &[400], None),
        ("/v1/models;x=1", &[400], None),
        ("/V1/models", &[404], None),
        ("/v1/models%00", &[400], None),
        ("/v1/models%0d%0aX-Injected:%201", &[400], None),
        ("/v1/%2e%2e/%2e%2e/etc/passwd", &[400, 404], None),
        ("/v1/models/..%2f..%2fadmin", &[400], None),
        ("/v1/chat/completions/../../../admin", &[404], None),
        ("/v1/%5c..%5cadmin", &[400], None),
        ("/v1/.%2e/admin", &[404], None),
        ("/%2e%2e/v1/models", &[400, 404], None),
        ("/%76%31/models", &[200], Some("/v1/models")),
        ("/v1/./models", &[200], Some("/v1/models")),
        ("/v1//models", &[200], Some("/v1/models")),
        (
            "/v1/%C0%AE%C0%AE/admin",
            &[400, 404],
            Some("/v1/%C0%AE%C0%AE/admin"),
        ),
    ];
    let mut failures = Vec::new();
    for (i, (target, want, nim_path)) in cases.iter().enumerate() {
        let tag = format!("p={i}x");
        let full = format!("{target}?{tag}");
        let r = exchange(gw.addr, &h1_get(&full, ""), Duration::from_secs(3)).await;
        let status = r.as_ref().map(|r| r.status);
        let seen = seen_with(&gw, &tag);
        let ok_status = status.is_some_and(|s| want.contains(&s));
        let ok_nim = match nim_path {
            None => seen.is_empty(),
            Some(p) => seen.iter().all(|s| seen_path(s) == *p) && seen.len() <= 1,
        };
        let forwarded_ok = status != Some(200) || seen.len() == 1;
        eprintln!(
            "path {target}: status {status:?}, NIM saw {:?}",
            seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
        );
        // Refusals by the gateway itself (the NIM saw nothing) carry the OpenAI error shape.
        if let Some(r) = r
            .as_ref()
            .filter(|r| r.status != 200 && !r.body.is_empty() && seen.is_empty())
        {
            let code = r.error_code();
            assert!(
                matches!(code.as_str(), "bad_request" | "not_found"),
                "{target}: {code}"
            );
        }
        if !(ok_status && ok_nim && forwarded_ok) {
            failures.push(format!(
                "{target}: status {status:?} (want {want:?}), NIM saw {:?}",
                seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
            ));
        }
    }
    // Raw bytes hyper itself must refuse.
    for (name, target) in [
        ("raw NUL", &b"/v1/models\0"[..]),
        ("raw backslash", &b"/v1\\..\\admin"[..]),
        ("raw CR", &b"/v1/models\rX"[..]),
    ] {
        let req = cat(&[
            b"GET ",
            target,
            b" HTTP/1.1\r\nHost: gw\r\n",
            auth_line().as_bytes(),
            b"\r\n",
        ]);
        let r = exchange(gw.addr, &req, Duration::from_secs(3)).await;
        let st = r.as_ref().map(|r| r.status);
        if !matches!(st, Some(400) | None) {
            failures.push(format!("{name}: {st:?}"));
        }
    }
    for s in gw.nim.seen() {
        let p = seen_path(&s);
        let l = p.to_ascii_lowercase();
        if !p.starts_with("/v1/")
            || p.contains("//")
            || p.split('/').any(|seg| seg == ".." || seg == ".")
            || l.contains("%2e")
            || l.contains("%2f")
            || l.contains("%5c")
            || l.contains(';')
        {
            failures.push(format!("NIM saw an un-normalised path: {}", s.uri));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    gw.stop().await;
}

/// Python's `str.splitlines` boundaries: every character a JSON-lines reader may split on.
fn splitlines(s: &str) -> Vec<&str> {
    s.split(|c| {
        matches!(
            c,
            '\n' | '\r'
                | '\u{b}'
                | '\u{c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        )
    })
    .filter(|l| !l.is_empty())
    .collect()
}

#[tokio::test]
async fn line_separators_from_client_input_cannot_split_audit_records() {
    let gw = start().await;
    // A model with every separator (JSON escapes decode to raw characters) …
    let body = r#"{"model":"m\u2028x\u2029y\u0085z\u200b\u202e\u2066\u000b\u001c","messages":[]}"#;
    let (status, _, _) = send(post(
        &gw.url("/v1/chat/completions?sep=1"),
        Some(CLIENT_KEY),
        body,
    ))
    .await;
    assert_eq!(status, 200);
    // … and paths with raw UTF-8 separators (kept intact for the NIM), authenticated or not.
    let raw_path = "/v1/models/a\u{2028}b\u{85}c\u{2029}";
    let req = format!(
        "GET {raw_path}?sep=2 HTTP/1.1\r\nHost: gw\r\n{}\r\n",
        auth_line()
    );
    let r = exchange(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
    let st = r.map(|r| r.status);
    if st != Some(400) {
        let seen = seen_with(&gw, "sep=2");
        assert_eq!(seen.len(), 1, "{st:?}");
        assert_eq!(
            percent_decode_path(&seen_path(&seen[0])),
            raw_path,
            "non-ASCII path bytes changed on the way to the NIM"
        );
    }
    let req = format!(
        "GET {raw_path}?sep=3 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer wrong\u{2028}\r\n\r\n"
    );
    let _ = exchange(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = gw.audit_text();
    assert!(
        text.contains("/v1/chat/completions") && text.contains("/v1/models/a"),
        "{text}"
    );
    for piece in splitlines(&text) {
        let v: serde_json::Value = serde_json::from_str(piece)
            .unwrap_or_else(|e| panic!("audit line split by a separator ({e}): {piece:?}"));
        assert!(v.is_object() && v["event"].is_string(), "{piece}");
    }
    let uses = gw.audit_events("use").await;
    assert!(
        uses.iter()
            .any(|u| u["model"] == "m\u{2028}x\u{2029}y\u{85}z\u{200b}\u{202e}\u{2066}\u{b}\u{1c}"),
        "the model decodes back unchanged: {uses:?}"
    );
    gw.stop().await;
}

fn percent_decode_path(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() + 1 {
            if let Some(v) = p
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
