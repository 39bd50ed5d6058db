#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Security suite, section 6: header anomalies.
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
async fn malformed_and_oversized_headers_are_refused() {
    let gw = start().await;
    let a = auth_line();
    let get_with_lines = |i: usize, lines: &[u8]| {
        cat(&[
            format!("GET /v1/models?hdr={i} HTTP/1.1\r\nHost: gw\r\n{a}").as_bytes(),
            lines,
            b"\r\n",
        ])
    };
    let many: String = (0..120).map(|n| format!("X-H{n}: {n}\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "a".repeat(40_000));
    let long_target = format!(
        "GET /v1/models?hdr=13&q={} HTTP/1.1\r\nHost: gw\r\n{a}\r\n",
        "b".repeat(70_000)
    );
    // (name, bytes, allowed statuses; 0 = connection closed without a response)
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("bare CR in value", get_with_lines(0, b"X-Evil: a\rX-Injected: b\r\n"), &[400, 0]),
        ("NUL in value", get_with_lines(1, b"X-Evil: a\0b\r\n"), &[400, 0]),
        ("NUL in name", get_with_lines(2, b"X-Ev\0il: a\r\n"), &[400, 0]),
        ("obs-fold", get_with_lines(3, b"X-Folded: a\r\n b\r\n"), &[400, 200, 0]),
        ("line without colon", get_with_lines(4, b"X-No-Colon value\r\n"), &[400, 0]),
        ("space in name", get_with_lines(5, b"X Evil: 1\r\n"), &[400, 0]),
        ("empty name", get_with_lines(6, b": value\r\n"), &[400, 0]),
        ("space before colon", get_with_lines(7, b"X-Evil : 1\r\n"), &[400, 0]),
        ("Latin-1 value", get_with_lines(8, b"X-Latin: caf\xe9\r\n"), &[200, 400]),
        ("control char 0x01 in value", get_with_lines(9, b"X-Ctl: a\x01b\r\n"), &[400, 0]),
        ("more headers than max_headers", get_with_lines(10, many.as_bytes()), &[431, 400, 0]),
        ("header larger than max_header_bytes", get_with_lines(11, big.as_bytes()), &[431, 400, 0]),
        (
            "obs-folded Authorization",
            format!("GET /v1/models?hdr=12 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer\r\n {CLIENT_KEY}\r\n\r\n").into_bytes(),
            &[400, 401, 0],
        ),
        ("request line larger than max_header_bytes", long_target.into_bytes(), &[414, 431, 400, 0]),
    ];
    let mut failures = Vec::new();
    for (i, (name, bytes, want)) in cases.iter().enumerate() {
        let r = exchange(gw.addr, bytes, Duration::from_secs(3)).await;
        let st = r.as_ref().map_or(0, |r| r.status);
        let seen = seen_with(&gw, &format!("hdr={i}"));
        eprintln!(
            "header case [{name}]: status {st}, NIM saw it {}x",
            seen.len()
        );
        if !want.contains(&st) {
            failures.push(format!(
                "{name}: status {st} (0 = no response), want {want:?}"
            ));
        }
        if st != 200 && !seen.is_empty() {
            failures.push(format!("{name}: refused ({st}) but the NIM saw it"));
        }
        for s in &seen {
            assert_only_our_credential(s, name);
            assert!(s.headers.get("x-injected").is_none(), "{name}");
            for v in s.headers.values() {
                assert!(
                    !v.as_bytes()
                        .iter()
                        .any(|b| *b == b'\r' || *b == b'\n' || *b == 0),
                    "{name}: CR/LF/NUL forwarded upstream"
                );
            }
            if *name == "Latin-1 value" {
                assert_eq!(s.headers["x-latin"].as_bytes(), b"caf\xe9");
            }
        }
    }
    // Just under the limits still works.
    let ok: String = (0..90).map(|n| format!("X-H{n}: {n}\r\n")).collect();
    let r = exchange(
        gw.addr,
        &get_with_lines(99, ok.as_bytes()),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(r.map(|r| r.status), Some(200), "90 headers are fine");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    gw.stop().await;
}

/// Cookies and client-written forwarding claims stay at nimgate; the NIM's `Set-Cookie` and
/// `WWW-Authenticate` never reach the client.
#[tokio::test]
async fn cookies_and_forwarding_headers_do_not_cross() {
    let gw = start().await;
    let extra = "Cookie: session=client-secret-9\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nX-Real-IP: 10.0.0.2\r\n";
    let r = exchange(
        gw.addr,
        &h1_get("/v1/models?ck=1", extra),
        Duration::from_secs(3),
    )
    .await
    .expect("a response");
    assert_eq!(r.status, 200);
    let seen = seen_with(&gw, "ck=1");
    assert_eq!(seen.len(), 1);
    for h in [
        "cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    ] {
        assert!(
            seen[0].headers.get(h).is_none(),
            "{h} reached the NIM: {:?}",
            seen[0].headers
        );
    }
    // The fake NIM's 401 for a wrong key carries no cookie, so check the response rewrite with a
    // forced 401 (its error body) and the gateway's own headers.
    let r = exchange(
        gw.addr,
        &h1_get("/v1/models?ck=2", "X-Fake-Status: 401\r\n"),
        Duration::from_secs(3),
    )
    .await
    .expect("a response");
    assert!(r.header("set-cookie").is_none() && r.header("www-authenticate").is_none());
    gw.stop().await;
}
