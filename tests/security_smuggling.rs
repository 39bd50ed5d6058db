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
    // TE.CL shape: chunked ends after "0\r\n\r\n"; Content-Length covers the smuggled request.
    let te_cl = |i: usize, te_lines: &str| {
        let body = format!("0\r\n\r\n{}", smuggled(i));
        let framing = format!("Content-Length: {}\r\n{te_lines}", body.len());
        format!("{}{body}", head(i, "HTTP/1.1", &framing)).into_bytes()
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
    let mut v: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut i = 0;
    let mut next = || {
        i += 1;
        i - 1
    };
    let n = next();
    v.push((
        "CL + TE: chunked",
        te_cl(n, "Transfer-Encoding: chunked\r\n"),
    ));
    let n = next();
    v.push(("TE: chunked before CL", {
        let body = format!("0\r\n\r\n{}", smuggled(n));
        let framing = format!(
            "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
            body.len()
        );
        format!("{}{body}", head(n, "HTTP/1.1", &framing)).into_bytes()
    }));
    let n = next();
    v.push(("two different Content-Length headers", {
        let body = format!("0\r\n\r\n{}", smuggled(n));
        let framing = format!("Content-Length: 5\r\nContent-Length: {}\r\n", body.len());
        format!("{}{body}", head(n, "HTTP/1.1", &framing)).into_bytes()
    }));
    let n = next();
    v.push(("Content-Length list with different values", {
        let body = format!("0\r\n\r\n{}", smuggled(n));
        let framing = format!("Content-Length: 5, {}\r\n", body.len());
        format!("{}{body}", head(n, "HTTP/1.1", &framing)).into_bytes()
    }));
    let n = next();
    v.push((
        "TE: chunked, identity (+CL)",
        te_cl(n, "Transfer-Encoding: chunked, identity\r\n"),
    ));
    let n = next();
    v.push((
        "TE: identity, chunked (+CL)",
        te_cl(n, "Transfer-Encoding: identity, chunked\r\n"),
    ));
    let n = next();
    v.push((
        "TE: '  chunked' leading spaces (+CL)",
        te_cl(n, "Transfer-Encoding:   chunked\r\n"),
    ));
    let n = next();
    v.push((
        "TE: tab chunked (+CL)",
        te_cl(n, "Transfer-Encoding:\tchunked\r\n"),
    ));
    let n = next();
    v.push((
        "TE obs-fold (+CL)",
        te_cl(n, "Transfer-Encoding:\r\n chunked\r\n"),
    ));
    let n = next();
    v.push((
        "TE: xchunked (+CL)",
        te_cl(n, "Transfer-Encoding: xchunked\r\n"),
    ));
    let n = next();
    v.push((
        "TE: \"chunked\" quoted (+CL)",
        te_cl(n, "Transfer-Encoding: \"chunked\"\r\n"),
    ));
    let n = next();
    v.push((
        "'Transfer-Encoding : chunked' space before colon (+CL)",
        te_cl(n, "Transfer-Encoding : chunked\r\n"),
    ));
    let n = next();
    v.push((
        "two TE headers chunked then identity (+CL)",
        te_cl(
            n,
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        ),
    ));
    let n = next();
    v.push((
        "TE: CHUNKED upper case (+CL)",
        te_cl(n, "Transfer-Encoding: CHUNKED\r\n"),
    ));
    let n = next();
    v.push(("TE on HTTP/1.0 (+CL)", {
        let body = format!("0\r\n\r\n{}", smuggled(n));
        let framing = format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            body.len()
        );
        format!("{}{body}", head(n, "HTTP/1.0", &framing)).into_bytes()
    }));
    let n = next();
    v.push(("chunk size 'zz'", chunked(n, "zz\r\nhello\r\n0\r\n\r\n")));
    let n = next();
    v.push(("chunk size '-1'", chunked(n, "-1\r\nhello\r\n0\r\n\r\n")));
    let n = next();
    v.push(("chunk size '+5'", chunked(n, "+5\r\nhello\r\n0\r\n\r\n")));
    let n = next();
    v.push(("chunk size '0x5'", chunked(n, "0x5\r\nhello\r\n0\r\n\r\n")));
    let n = next();
    v.push((
        "chunk size hex overflow",
        chunked(n, "fffffffffffffffffffffff5\r\nhello\r\n0\r\n\r\n"),
    ));
    let n = next();
    v.push((
        "chunk data longer than its size",
        chunked(n, "3\r\nhello\r\n0\r\n\r\n"),
    ));
    let n = next();
    v.push(("Content-Length over max_body_bytes", with_cl(n, "17000000")));
    let n = next();
    v.push(("Content-Length -1", with_cl(n, "-1")));
    let n = next();
    v.push(("Content-Length +5", with_cl(n, "+5")));
    let n = next();
    v.push((
        "Content-Length overflow",
        with_cl(n, "99999999999999999999999"),
    ));
    let n = next();
    v.push(("Content-Length 0x10", with_cl(n, "0x10")));
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
