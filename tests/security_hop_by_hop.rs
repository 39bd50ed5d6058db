#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Security suite, section 3: hop-by-hop abuse.
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

const HOP_CASES: [&str; 7] = [
    "Connection: close, authorization\r\n",
    "Connection: keep-alive, x-request-id\r\nX-Request-Id: rid-hop-1\r\n",
    "Connection: Authorization, Host\r\n",
    "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    "Connection: x-hop-secret, te, trailer, keep-alive\r\nX-Hop-Secret: 1\r\nTE: trailers\r\nTrailer: x-t\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n",
    "Connection: keep-alive\r\nConnection: authorization, x-hop-b\r\nX-Hop-B: 1\r\n",
    "Connection: AUTHORIZATION,,, ,authorization , X-Api-Key\r\nX-Api-Key: client-secret-x\r\n",
];

const HOP_HEADERS: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
    "x-hop-secret",
    "x-hop-b",
    "x-api-key",
    "transfer-encoding",
];

async fn hop_by_hop_abuse(gw: &Gateway, version: http::Version) {
    for (i, extra) in HOP_CASES.iter().enumerate() {
        let target = format!("/v1/chat/completions?hop={i}");
        let r = exchange(gw.addr, &h1_chat(&target, extra), Duration::from_secs(3)).await;
        assert_eq!(
            r.as_ref().map(|r| r.status),
            Some(200),
            "{extra:?}: {:?}",
            r.as_ref()
                .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        );
        let seen = seen_with(gw, &format!("hop={i}"));
        assert_eq!(seen.len(), 1, "{extra:?}");
        let s = &seen[0];
        assert_eq!(s.version, version);
        assert_only_our_credential(s, extra);
        for h in HOP_HEADERS {
            assert!(
                s.headers.get(h).is_none(),
                "{extra:?}: hop-by-hop or Connection-named header {h} reached the NIM"
            );
        }
        assert_eq!(
            seen_authority(s),
            gw.nim_addr.to_string(),
            "{extra:?}: upstream addressed elsewhere"
        );
        assert_eq!(seen_path(s), "/v1/chat/completions");
    }
}

#[tokio::test]
async fn hop_by_hop_abuse_cannot_touch_the_key_http1_upstream() {
    let gw = start().await;
    hop_by_hop_abuse(&gw, http::Version::HTTP_11).await;
    gw.stop().await;
}

#[tokio::test]
async fn hop_by_hop_abuse_cannot_touch_the_key_http2_upstream() {
    let gw = start_with(Opts::default().upstream("http2 = true")).await;
    hop_by_hop_abuse(&gw, http::Version::HTTP_2).await;
    gw.stop().await;
}

#[tokio::test]
async fn connection_header_with_a_non_utf8_token_still_strips_the_named_headers() {
    let gw = start().await;
    let req = cat(&[
        format!(
            "GET /v1/models?hopx=1 HTTP/1.1\r\nHost: gw\r\n{}X-Hop-C: 1\r\nConnection: x-hop-c, caf",
            auth_line()
        )
        .as_bytes(),
        b"\xe9\r\n\r\n",
    ]);
    let r = exchange(gw.addr, &req, Duration::from_secs(3)).await;
    let status = r.as_ref().map(|r| r.status);
    assert!(matches!(status, Some(200 | 400)), "{status:?}");
    for s in seen_with(&gw, "hopx=1") {
        assert_only_our_credential(&s, "non-utf8 Connection");
        assert!(
            s.headers.get("x-hop-c").is_none(),
            "x-hop-c is named in Connection but reached the NIM (client got {status:?}): {:?}",
            s.headers
        );
    }
    gw.stop().await;
}

/// An upstream that answers `101 Switching Protocols` must not get a tunnel to the client: 502.
#[tokio::test]
async fn an_upstream_101_is_refused_with_502() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nRAW-TUNNEL-BYTES")
                    .await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            });
        }
    });
    let gw = start_with(Opts::default().upstream_url(format!("http://{up}"))).await;
    let r = exchange(gw.addr, &h1_get("/v1/models", ""), Duration::from_secs(5))
        .await
        .expect("a response");
    assert_eq!(r.status, 502, "an upstream 101 reached the client");
    assert!(!String::from_utf8_lossy(&r.body).contains("RAW-TUNNEL"));
    gw.stop().await;
}
