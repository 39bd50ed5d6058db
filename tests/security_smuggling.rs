#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Security suite, section 1: request smuggling.
//!
//! Part of the hostile-input security suite (DESIGN.md "Security invariants" 1–5 and 8), split
//! by section into tests/security_*.rs. Every case sends its attack over a real loopback socket —
//! raw HTTP/1.1 bytes or hand-written HTTP/2 frames — and asserts the safe outcome: the status the
//! client gets, whether the connection is closed, and exactly what the fake NIM (and, for
//! routing, a canary listener) received. Shared raw-socket and h2 helpers live in tests/common/.

mod common;

use common::raw::*;
use common::*;
use std::time::Duration;

fn smuggled(i: usize) -> String {
    format!(
        "GET /v1/models?smuggled={i} HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n"
    )
}

/// (name, raw bytes) of every framing attack; case `i` targets `...?case={i}` and embeds a
/// complete authenticated `GET /v1/models?smuggled={i}` where a desynchronised parser would
/// see a second request.
fn smuggling_cases() -> Vec<(&'static str, Vec<u8>)> {
    let head = |i: usize, version: &str, framing: &str| {
        format!(
            "POST /v1/chat/completions?case={i} {version}\r\nHost: gw.example\r\n{}Content-Type: application/json\r\n{framing}\r\n",
            auth_line()
        )
    };
    // The body is a complete chunked body ("0\r\n\r\n") followed by the smuggled request;
    // `{len}` in the framing lines is the length of all of it (TE.CL shape and its variants).
    let framed = |i: usize, version: &str, framing: &str| {
        let body = format!("0\r\n\r\n{}", smuggled(i));
        let framing = framing.replace("{len}", &body.len().to_string());
        format!("{}{body}", head(i, version, &framing)).into_bytes()
    };
    let chunked = |i: usize, chunks: &str| {
        format!(
            "{}{chunks}{}",
            head(i, "HTTP/1.1", "Transfer-Encoding: chunked\r\n"),
            smuggled(i)
        )
        .into_bytes()
    };
    let with_cl = |i: usize, cl: &str| {
        format!(
            "{}{}",
            head(i, "HTTP/1.1", &format!("Content-Length: {cl}\r\n")),
            smuggled(i)
        )
        .into_bytes()
    };
    // (name, HTTP version, framing header lines)
    let framings: [(&'static str, &str, &str); 15] = [
        ("CL + TE: chunked", "HTTP/1.1", "Content-Length: {len}\r\nTransfer-Encoding: chunked\r\n"),
        ("TE: chunked before CL", "HTTP/1.1", "Transfer-Encoding: chunked\r\nContent-Length: {len}\r\n"),
        ("two different Content-Length headers", "HTTP/1.1", "Content-Length: 5\r\nContent-Length: {len}\r\n"),
        ("Content-Length list with different values", "HTTP/1.1", "Content-Length: 5, {len}\r\n"),
        ("TE: chunked, identity (+CL)", "HTTP/1.1", "Content-Length: {len}\r\nTransfer-Encoding: chunked, identity\r\n"),
        ("TE: identity, chunked (+CL)", "HTTP/1.1", "Content-Length: {len}\r\nTransfer-Encoding: identity, chunked\r\n"),
        ("TE: '  chunked' leading spaces (+CL)", "HTTP/1.1", "Content-Length: {len}\r\nTransfer-Encoding:   chunked\r\n"),
        ("TE: tab chunked (+CL)", "HTTP/1.1", "Content-Length: {len}\r\nTransfer-Encoding:\tchunked\r\n"),
        ("TE obs-fold (+CL)", "HTTP/1.1", "Content-Length: {len}\r\nTransfer-Encoding:\r\n chunked\r\n"),
        ("TE: xchunked (+CL)", "HTTP/1.1", "Content-Length: {len}\r\nTransfer-Encoding: xchunked\r\n"),
        ("TE: \"chunked\" quoted (+CL)", "HTTP/1.1", "Content-Length: {len}\r\nTransfer-Encoding: \"chunked\"\r\n"),
        ("'Transfer-Encoding : chunked' space before colon (+CL)", "HTTP/1.1", "Content-Length: {len}\r\nTransfer-Encoding : chunked\r\n"),
        ("two TE headers chunked then identity (+CL)", "HTTP/1.1", "Content-Length: {len}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"),
        ("TE: CHUNKED upper case (+CL)", "HTTP/1.1", "Content-Length: {len}\r\nTransfer-Encoding: CHUNKED\r\n"),
        ("TE on HTTP/1.0 (+CL)", "HTTP/1.0", "Content-Length: {len}\r\nTransfer-Encoding: chunked\r\n"),
    ];
    // (name, chunked body before the smuggled request)
    let bad_chunks: [(&'static str, &str); 6] = [
        ("chunk size 'zz'", "zz\r\nhello\r\n0\r\n\r\n"),
        ("chunk size '-1'", "-1\r\nhello\r\n0\r\n\r\n"),
        ("chunk size '+5'", "+5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size '0x5'", "0x5\r\nhello\r\n0\r\n\r\n"),
        (
            "chunk size hex overflow",
            "fffffffffffffffffffffff5\r\nhello\r\n0\r\n\r\n",
        ),
        ("chunk data longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
    ];
    // (name, Content-Length value)
    let bad_lengths: [(&'static str, &str); 5] = [
        ("Content-Length over max_body_bytes", "17000000"),
        ("Content-Length -1", "-1"),
        ("Content-Length +5", "+5"),
        ("Content-Length overflow", "99999999999999999999999"),
        ("Content-Length 0x10", "0x10"),
    ];
    // A case's number is its index in `v`.
    let mut v: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for (name, version, framing) in framings {
        v.push((name, framed(v.len(), version, framing)));
    }
    for (name, chunks) in bad_chunks {
        v.push((name, chunked(v.len(), chunks)));
    }
    for (name, cl) in bad_lengths {
        v.push((name, with_cl(v.len(), cl)));
    }
    v
}

#[tokio::test]
async fn request_smuggling_is_rejected_and_never_reaches_the_nim() {
    let gw = start().await;
    let addr = gw.addr;
    let cases = smuggling_cases();
    let mut set = tokio::task::JoinSet::new();
    for (i, (name, bytes)) in cases.iter().cloned().enumerate() {
        set.spawn(async move {
            let mut c = H1::connect(addr).await;
            c.send(&bytes).await;
            let first = c.response(Duration::from_secs(3)).await;
            let closed = c.closed_within(Duration::from_millis(1500)).await;
            let extra = c.extra_responses();
            (i, name, first.map(|r| r.status), closed, extra)
        });
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        results.push(r.unwrap());
    }
    results.sort_by_key(|r| r.0);
    let seen = gw.nim.seen();
    let mut failures = Vec::new();
    for (i, name, status, closed, extra) in &results {
        let reached = seen
            .iter()
            .filter(|s| s.uri.ends_with(&format!("?case={i}")))
            .count();
        let smuggled = seen
            .iter()
            .filter(|s| s.uri.contains(&format!("smuggled={i}")))
            .count();
        let rejected = matches!(status, Some(400 | 413 | 501));
        let line = format!(
            "case {i} [{name}]: status {status:?}, server closed: {closed}, extra responses: {extra}, NIM saw it {reached}x, smuggled request reached NIM {smuggled}x"
        );
        eprintln!("{line}");
        if !(rejected || *closed) || *extra > 0 || reached > 1 || smuggled > 0 {
            failures.push(line);
        }
    }
    assert!(
        !seen.iter().any(|s| s.uri.contains("smuggled")),
        "a smuggled request reached the NIM: {:?}",
        seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
    assert!(
        failures.is_empty(),
        "smuggling cases not defended:\n{}",
        failures.join("\n")
    );
    assert!(seen.len() <= cases.len());
    gw.stop().await;
}
