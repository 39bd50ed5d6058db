#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Security suite, section 2: credential override.
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
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test]
async fn raw_credential_tricks_get_401_and_reach_nothing() {
    let gw = start().await;
    let a = format!("Bearer {CLIENT_KEY}");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "two Authorization lines with the client key",
            h1_get(
                "/v1/models?cred=0",
                &format!("Authorization: {a}\r\n"),
            ),
            "malformed_key",
        ),
        (
            "authorization + AUTHORIZATION (case variants)",
            format!(
                "GET /v1/models?cred=1 HTTP/1.1\r\nHost: gw\r\nauthorization: {a}\r\nAUTHORIZATION: Bearer {NIM_KEY}\r\n\r\n"
            )
            .into_bytes(),
            "malformed_key",
        ),
        (
            "Authorization carrying the NIM key",
            format!(
                "GET /v1/models?cred=2 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {NIM_KEY}\r\n\r\n"
            )
            .into_bytes(),
            "unknown_key",
        ),
        (
            "comma-joined client and NIM key",
            format!(
                "GET /v1/models?cred=3 HTTP/1.1\r\nHost: gw\r\nAuthorization: {a}, Bearer {NIM_KEY}\r\n\r\n"
            )
            .into_bytes(),
            "malformed_key",
        ),
        (
            "non-UTF-8 Authorization",
            cat(&[
                b"GET /v1/models?cred=4 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer \xff\xfe",
                CLIENT_KEY.as_bytes(),
                b"\r\n\r\n",
            ]),
            "malformed_key",
        ),
        (
            "Latin-1 byte inside the key",
            cat(&[
                b"GET /v1/models?cred=5 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ",
                CLIENT_KEY.as_bytes(),
                b"\xe9\r\n\r\n",
            ]),
            "malformed_key",
        ),
        (
            "X-Api-Key with the client key and no Authorization",
            format!(
                "GET /v1/models?cred=6 HTTP/1.1\r\nHost: gw\r\nX-Api-Key: {CLIENT_KEY}\r\napi-key: {CLIENT_KEY}\r\n\r\n"
            )
            .into_bytes(),
            "missing_key",
        ),
        (
            "key only in ?api_key=",
            format!("GET /v1/models?cred=7&api_key={CLIENT_KEY} HTTP/1.1\r\nHost: gw\r\n\r\n")
                .into_bytes(),
            "missing_key",
        ),
    ];
    let mut failures = Vec::new();
    for (name, bytes, _) in &cases {
        let r = exchange(gw.addr, bytes, Duration::from_secs(3)).await;
        match &r {
            Some(r) if r.status == 401 => {
                assert_eq!(r.error_code(), "invalid_api_key", "{name}");
                let body = String::from_utf8_lossy(&r.body);
                assert!(
                    !body.contains(NIM_KEY) && !body.contains(CLIENT_KEY),
                    "{name}: key echoed"
                );
                assert!(r.header("www-authenticate").is_some(), "{name}");
            }
            other => failures.push(format!(
                "{name}: expected 401, got {:?}",
                other.as_ref().map(|r| r.status)
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        gw.nim.requests.load(Ordering::Relaxed),
        0,
        "no rejected request may reach the NIM: {:?}",
        gw.nim.seen().iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
    let denied = gw.audit_events("denied").await;
    assert_eq!(denied.len(), cases.len(), "{denied:?}");
    // Requests were sequential, so the records are in case order.
    for ((name, _, reason), rec) in cases.iter().zip(&denied) {
        assert_eq!(rec["status"], 401, "{name}: {rec}");
        assert_eq!(rec["reason"], *reason, "{name}: {rec}");
        assert!(rec.get("key_fingerprint").is_none(), "{name}: {rec}");
    }
    let trail = gw.audit_text();
    assert!(!trail.contains(NIM_KEY) && !trail.contains(CLIENT_KEY));
    gw.stop().await;
}

#[tokio::test]
async fn raw_client_credentials_are_stripped_in_every_combination() {
    let gw = start().await;
    let extras = [
        "Proxy-Authorization: Basic Y2xpZW50LXNlY3JldA==\r\n",
        "X-Api-Key: client-secret-x\r\nX-API-KEY: client-secret-x2\r\n",
        "api-key: client-secret-y\r\nApi-Key: client-secret-y2\r\n",
    ];
    let queries = [
        "",
        "&api_key=client-secret-q",
        "&API-KEY=client-secret-q&Api_Key=client-secret-r",
        "&api%5Fkey=client-secret-q&api%2dkey=client-secret-r&api_key",
    ];
    let mut n = 0;
    for mask in 0u8..8 {
        for (qi, q) in queries.iter().enumerate() {
            let mut extra = String::new();
            for (i, e) in extras.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    extra.push_str(e);
                }
            }
            let target = format!("/v1/chat/completions?combo={mask}-{qi}&keep=1{q}");
            let r = exchange(gw.addr, &h1_chat(&target, &extra), Duration::from_secs(3))
                .await
                .unwrap_or_else(|| panic!("no response for {target}"));
            assert_eq!(r.status, 200, "{target} {extra}");
            assert!(!String::from_utf8_lossy(&r.body).contains(NIM_KEY));
            n += 1;
        }
    }
    let seen = gw.nim.seen();
    assert_eq!(seen.len(), n, "one upstream request per client request");
    for s in &seen {
        assert_only_our_credential(s, &s.uri);
        assert!(s.uri.contains("keep=1"), "other params survive: {}", s.uri);
    }
    gw.stop().await;
}

#[tokio::test]
async fn percent_encoded_api_key_query_names_are_stripped() {
    let gw = start().await;
    let mut failures = Vec::new();
    for (i, q) in [
        "%61pi_key=client-secret-a",
        "api%5fKEY=client-secret-b",
        "%41%50%49%5F%4B%45%59=client-secret-c",
        "api%2Dkey=client-secret-d",
        "api%5Fkey=client-secret-e&%61pi-key=client-secret-f",
    ]
    .iter()
    .enumerate()
    {
        let target = format!("/v1/chat/completions?enc={i}&{q}");
        let r = exchange(gw.addr, &h1_chat(&target, ""), Duration::from_secs(3)).await;
        let status = r.as_ref().map(|r| r.status);
        assert!(matches!(status, Some(200 | 400)), "{q}: {status:?}");
        for s in seen_with(&gw, &format!("enc={i}")) {
            let decoded = percent_decode(&s.uri).to_ascii_lowercase();
            eprintln!(
                "encoded query {q}: client got {status:?}, NIM saw {}",
                s.uri
            );
            if decoded.contains("api_key")
                || decoded.contains("api-key")
                || s.uri.contains("client-secret")
            {
                failures.push(format!("{q}: client got {status:?}, NIM saw {}", s.uri));
            }
            let auth: Vec<_> = s.headers.get_all("authorization").iter().collect();
            assert_eq!(auth, [format!("Bearer {NIM_KEY}").as_str()], "{q}");
        }
    }
    assert!(
        failures.is_empty(),
        "percent-encoded api_key/api-key parameters reached the NIM:\n{}",
        failures.join("\n")
    );
    gw.stop().await;
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = s
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

/// A request body of `chunks` followed by `trailers` (what an h2 or chunked HTTP/1 client can send).
struct Trailed {
    chunks: std::collections::VecDeque<bytes::Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for Trailed {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if let Some(c) = self.chunks.pop_front() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(c))));
        }
        std::task::Poll::Ready(
            self.trailers
                .take()
                .map(|t| Ok(http_body::Frame::trailers(t))),
        )
    }
}

fn credential_trailers() -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert(
        "authorization",
        format!("Bearer {CLIENT_KEY}").parse().unwrap(),
    );
    t.insert("x-api-key", "client-secret-1".parse().unwrap());
    t.insert("api-key", "client-secret-2".parse().unwrap());
    t.insert(
        "proxy-authorization",
        "Basic client-secret-3".parse().unwrap(),
    );
    t.insert("x-innocent", "1".parse().unwrap());
    t
}

/// A chat body of at least `size` bytes, valid JSON, split into 16 KiB pieces.
fn big_chat_chunks(size: usize) -> std::collections::VecDeque<bytes::Bytes> {
    let pad = "x".repeat(size);
    let body = format!(
        r#"{{"model":"meta/llama-3.1-8b-instruct","messages":[{{"role":"user","content":"{pad}"}}]}}"#
    );
    body.as_bytes()
        .chunks(16 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect()
}

async fn trailers_never_reach_the_nim(gw: &Gateway, client_h2: bool) {
    for (i, size) in [10usize, 200 * 1024].into_iter().enumerate() {
        let tag = format!("trl={i}{}", u8::from(client_h2));
        let req = http::Request::post(gw.url(&format!("/v1/chat/completions?{tag}")))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .body(Trailed {
                chunks: big_chat_chunks(size),
                trailers: Some(credential_trailers()),
            })
            .unwrap();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(client_h2)
                .build_http::<Trailed>();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{tag}");
        let seen = seen_with(gw, &tag);
        assert_eq!(seen.len(), 1, "{tag}");
        assert_only_our_credential(&seen[0], &tag);
        assert!(
            seen[0].trailers.is_none(),
            "{tag} ({size} bytes): client trailers reached the NIM: {:?}",
            seen[0].trailers
        );
    }
}

#[tokio::test]
async fn request_trailers_never_reach_an_http2_upstream() {
    let gw = start_with(Opts::default().upstream("http2 = true")).await;
    trailers_never_reach_the_nim(&gw, true).await;
    trailers_never_reach_the_nim(&gw, false).await;
    gw.stop().await;
}

#[tokio::test]
async fn request_trailers_never_reach_an_http1_upstream() {
    let gw = start().await;
    trailers_never_reach_the_nim(&gw, true).await;
    trailers_never_reach_the_nim(&gw, false).await;
    gw.stop().await;
}

/// WSGI-style servers read `X_Api_Key` as `X-Api-Key`: no underscore spelling may pass.
#[tokio::test]
async fn underscore_spellings_of_credential_headers_are_stripped() {
    for h2 in [false, true] {
        let gw = if h2 {
            start_with(Opts::default().upstream("http2 = true")).await
        } else {
            start().await
        };
        let extra = "X_Api_Key: client-secret-1\r\nApi_Key: client-secret-2\r\nProxy_Authorization: Basic client-secret-3\r\nAuthorization_: Bearer client-secret-4\r\nX_Custom: client-secret-5\r\n";
        let r = exchange(
            gw.addr,
            &h1_get("/v1/models?und=1", extra),
            Duration::from_secs(3),
        )
        .await
        .expect("a response");
        assert_eq!(r.status, 200);
        let seen = seen_with(&gw, "und=1");
        assert_eq!(seen.len(), 1);
        assert_only_our_credential(&seen[0], "underscore spellings");
        assert!(
            seen[0].headers.keys().all(|n| !n.as_str().contains('_')),
            "a header with `_` in its name reached the NIM (h2 upstream: {h2}): {:?}",
            seen[0].headers
        );
        gw.stop().await;
    }
}

/// A NIM that echoes the key (in a header, a JSON body, a 302 `Location`, a 401 body) must not
/// hand it to the client; every removal is counted.
#[tokio::test]
async fn a_key_echoed_by_the_nim_never_reaches_the_client() {
    for h2 in [false, true] {
        let gw = if h2 {
            start_with(Opts::default().upstream("http2 = true")).await
        } else {
            start().await
        };
        for how in ["header", "body", "location", "401"] {
            let mut req = post(
                &gw.url("/v1/chat/completions"),
                Some(CLIENT_KEY),
                &chat_body(false),
            );
            req.headers_mut()
                .insert("x-fake-echo-auth", how.parse().unwrap());
            let (status, headers, body) = send(req).await;
            assert!(
                status == 200 || status == 302 || status == 401,
                "{how}: {status}"
            );
            for (n, v) in &headers {
                let v = String::from_utf8_lossy(v.as_bytes());
                assert!(
                    !v.contains(NIM_KEY),
                    "{how}: key in response header {n}: {v}"
                );
            }
            if how == "location" {
                assert!(
                    headers.get("location").is_none(),
                    "a Location with the key was kept"
                );
            }
            assert!(
                !String::from_utf8_lossy(&body).contains(NIM_KEY),
                "{how}: key in the response body: {}",
                String::from_utf8_lossy(&body)
            );
            if how == "body" {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert!(v["echo"].as_str().unwrap().starts_with("Bearer *"), "{v}");
            }
        }
        let (_, m) = get_admin(gw.admin, "/metrics").await.unwrap();
        let line = m
            .lines()
            .find(|l| l.starts_with("nimgate_key_redactions_total "))
            .unwrap_or_else(|| panic!("no redaction counter:\n{m}"));
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 5, "{line}");
        gw.stop().await;
    }
}

#[tokio::test]
async fn other_query_spellings_of_a_key_are_stripped() {
    let gw = start().await;
    for (i, q) in [
        "key=client-secret",
        "apikey=client-secret",
        "ApiKey=client-secret",
        "api_key[]=client-secret",
        "api_key%5B%5D=client-secret",
        "access_token=client-secret",
    ]
    .iter()
    .enumerate()
    {
        let target = format!("/v1/models?qs={i}&{q}");
        let r = exchange(gw.addr, &h1_get(&target, ""), Duration::from_secs(3))
            .await
            .expect("a response");
        assert_eq!(r.status, 200, "{q}");
        let seen = seen_with(&gw, &format!("qs={i}"));
        assert_eq!(seen.len(), 1, "{q}");
        assert_only_our_credential(&seen[0], q);
    }
    gw.stop().await;
}
