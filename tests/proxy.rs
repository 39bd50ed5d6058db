#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Foundation behaviour over real loopback sockets: auth, key injection, header hygiene,
//! streaming, cancellation, key-file rotation, errors, request ids, readiness.

mod common;

use bytes::Bytes;
use common::*;
use http::{header, Request};
use http_body_util::{BodyExt, Full};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn only_our_credential(seen: &nimgate::fakenim::Seen, key: &str) {
    let auth: Vec<_> = seen.headers.get_all(header::AUTHORIZATION).iter().collect();
    assert_eq!(
        auth.len(),
        1,
        "exactly one Authorization upstream: {:?}",
        seen.headers
    );
    assert_eq!(auth[0], &format!("Bearer {key}"));
    for h in ["x-api-key", "api-key", "proxy-authorization"] {
        assert!(seen.headers.get(h).is_none(), "{h} leaked upstream");
    }
    assert!(
        !seen.uri.contains("api_key") && !seen.uri.contains("api-key"),
        "query credential leaked: {}",
        seen.uri
    );
    for v in seen.headers.values() {
        let v = v.to_str().unwrap_or("");
        assert!(
            !v.contains("ngk_test_client_key"),
            "client key leaked upstream in a header"
        );
    }
}

#[tokio::test]
async fn authorized_chat_reaches_nim_with_only_our_key() {
    let gw = start().await;
    let (s, v) = gw.chat().await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    let seen = gw.nim.seen();
    assert_eq!(seen.len(), 1);
    only_our_credential(&seen[0], NIM_KEY);
    assert_eq!(seen[0].uri, "/v1/chat/completions");
    // Host names the upstream (built once at start-up), exactly once.
    let hosts: Vec<_> = seen[0].headers.get_all("host").iter().collect();
    assert_eq!(hosts, vec![gw.nim_addr.to_string().as_str()]);
    let uses = gw.audit_events("use").await;
    assert_eq!(uses.len(), 1);
    assert_eq!(uses[0]["client_id"], "team-a");
    assert_eq!(uses[0]["model"], "meta/llama-3.1-8b-instruct");
    let done = gw.audit_events("done").await;
    assert_eq!(done[0]["status"], 200);
    assert_eq!(done[0]["usage"]["total_tokens"], 17);
    assert!(done[0].get("reason").is_none(), "{}", done[0]);
    let all = gw.audit_text();
    assert!(!all.contains(NIM_KEY) && !all.contains(CLIENT_KEY));
    gw.stop().await;
}

#[tokio::test]
async fn every_route_is_forwarded() {
    let gw = start().await;
    for (m, p) in [
        ("GET", "/v1/models"),
        ("GET", "/v1/health/ready"),
        ("GET", "/v1/health/live"),
        ("GET", "/v1/metadata"),
    ] {
        let req = Request::builder()
            .method(m)
            .uri(gw.url(p))
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (s, _, _) = send(req).await;
        assert_eq!(s, 200, "{m} {p}");
    }
    for p in ["/v1/completions", "/v1/embeddings"] {
        let (s, v) = send_json(post(
            &gw.url(p),
            Some(CLIENT_KEY),
            r#"{"model":"m","prompt":"x","input":"x"}"#,
        ))
        .await;
        assert_eq!(s, 200, "{p}: {v}");
        assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    }
    assert_eq!(gw.nim.seen().len(), 6);
    for s in gw.nim.seen() {
        only_our_credential(&s, NIM_KEY);
    }
    gw.stop().await;
}

#[tokio::test]
async fn missing_malformed_and_unknown_keys_get_401_and_reach_nothing() {
    let gw = start().await;
    let cases: Vec<Option<String>> = vec![
        None,
        Some("Basic dXNlcjpwYXNz".into()),
        Some("Bearer".into()),
        Some("Bearer ".into()),
        Some(format!("Bearer {CLIENT_KEY}x")),
        Some(format!("bearer {NIM_KEY}")),
    ];
    for c in &cases {
        let mut b = Request::post(gw.url("/v1/chat/completions"));
        if let Some(v) = c {
            b = b.header("authorization", v.as_str());
        }
        let (s, h, body) = send(b.body(Full::new(Bytes::from(chat_body(false)))).unwrap()).await;
        assert_eq!(s, 401, "{c:?}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error_code(&v), "invalid_api_key");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(h.get("x-request-id").is_some());
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("ngk_") && !text.contains("nvapi"), "{text}");
    }
    // Key in X-Api-Key instead of Authorization is not accepted either.
    let req = Request::get(gw.url("/v1/models"))
        .header("x-api-key", CLIENT_KEY)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(req).await.0, 401);
    assert_eq!(
        gw.nim.requests.load(Ordering::Relaxed),
        0,
        "the NIM must see no unauthenticated request"
    );
    let denied = gw.audit_events("denied").await;
    assert_eq!(denied.len(), cases.len() + 1);
    assert!(denied
        .iter()
        .all(|d| d["status"] == 401 && d.get("key_fingerprint").is_none()));
    gw.stop().await;
}

#[tokio::test]
async fn client_credentials_never_pass_in_any_combination() {
    let gw = start().await;
    let extras: [(&str, &str); 3] = [
        ("x-api-key", "client-x"),
        ("api-key", "client-y"),
        ("proxy-authorization", "Basic Y2xpZW50"),
    ];
    let mut n = 0;
    for mask in 0u8..16 {
        let mut b = Request::post(gw.url(if mask & 8 != 0 {
            "/v1/chat/completions?api_key=client-q&x=1&API-KEY=z"
        } else {
            "/v1/chat/completions"
        }))
        .header("authorization", format!("Bearer {CLIENT_KEY}"));
        for (i, (h, v)) in extras.iter().enumerate() {
            if mask & (1 << i) != 0 {
                b = b.header(*h, *v);
            }
        }
        let (s, _, _) = send(b.body(Full::new(Bytes::from(chat_body(false)))).unwrap()).await;
        assert_eq!(s, 200);
        n += 1;
    }
    let seen = gw.nim.seen();
    assert_eq!(seen.len(), n);
    for s in &seen {
        only_our_credential(s, NIM_KEY);
    }
    assert!(
        seen.iter().any(|s| s.uri == "/v1/chat/completions?x=1"),
        "other query params survive"
    );
    gw.stop().await;
}

async fn connection_header_tricks(gw: &Gateway) {
    for conn in [
        "authorization",
        "x-api-key",
        "close, authorization",
        "keep-alive, x-request-id, authorization",
        "Authorization , X-Api-Key",
    ] {
        let req = Request::post(gw.url("/v1/chat/completions"))
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .header("connection", conn)
            .header("x-api-key", "client-x")
            .body(Full::new(Bytes::from(chat_body(false))))
            .unwrap();
        let (s, _, b) = send(req).await;
        assert_eq!(
            s,
            200,
            "Connection: {conn}: {}",
            String::from_utf8_lossy(&b)
        );
    }
    let seen = gw.nim.seen();
    assert_eq!(seen.len(), 5);
    for s in &seen {
        only_our_credential(s, NIM_KEY);
        assert!(
            s.headers.get("connection").is_none(),
            "Connection is hop-by-hop"
        );
    }
}

#[tokio::test]
async fn connection_header_cannot_remove_injected_key_http1_upstream() {
    let gw = start().await;
    connection_header_tricks(&gw).await;
    assert!(gw
        .nim
        .seen()
        .iter()
        .all(|s| s.version == http::Version::HTTP_11));
    gw.stop().await;
}

#[tokio::test]
async fn connection_header_cannot_remove_injected_key_http2_upstream() {
    let gw = start_with(Opts::default().upstream("http2 = true")).await;
    connection_header_tricks(&gw).await;
    assert!(
        gw.nim
            .seen()
            .iter()
            .all(|s| s.version == http::Version::HTTP_2),
        "upstream should be h2"
    );
    gw.stop().await;
}

#[tokio::test]
async fn http2_clients_are_served() {
    let gw = start().await;
    let req = post(
        &gw.url("/v1/chat/completions"),
        Some(CLIENT_KEY),
        &chat_body(false),
    );
    let resp = h2_client().request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    only_our_credential(&gw.nim.seen()[0], NIM_KEY);
    gw.stop().await;
}

#[tokio::test]
async fn sse_events_arrive_one_by_one_as_the_nim_emits_them() {
    let gw = start_with(Opts::default().sse_delay(Duration::from_millis(250))).await;
    let resp = gw.chat_stream().await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert!(
        h.get(header::CONTENT_LENGTH).is_none(),
        "no Content-Length on SSE"
    );
    assert_eq!(h[header::CACHE_CONTROL], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = resp.into_body();
    let start = Instant::now();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            let s = String::from_utf8_lossy(&d).into_owned();
            for _ in s.matches("data: {").filter(|_| true) {
                arrivals.push(start.elapsed());
            }
            text.push_str(&s);
        }
    }
    assert!(text.ends_with("data: [DONE]\n\n"));
    // 5 content events + 1 usage event; content events are 250 ms apart at the NIM.
    assert!(arrivals.len() >= 5, "{arrivals:?}");
    for w in arrivals[..5].windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(150),
            "events were batched, not streamed: {arrivals:?}"
        );
    }
    let done = gw.audit_events("done").await;
    assert_eq!(
        done[0]["usage"]["completion_tokens"], 5,
        "usage from the final SSE chunk"
    );
    assert_eq!(done[0]["usage"]["total_tokens"], 17);
    gw.stop().await;
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    let gw = start_with(Opts::default().sse_delay(Duration::from_millis(100))).await;
    gw.nim.sse_events.store(100, Ordering::Relaxed);
    let resp = gw.chat_stream().await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    let nim = gw.nim.clone();
    assert!(
        eventually(|| nim.streams_cancelled.load(Ordering::Relaxed) == 1).await,
        "upstream stream was not cancelled"
    );
    assert_eq!(nim.streams_completed.load(Ordering::Relaxed), 0);
    let done = gw.audit_events("done").await;
    assert_eq!(done[0]["reason"], "client_disconnected");
    gw.stop().await;
}

#[tokio::test]
async fn request_id_is_kept_or_generated_and_passed_both_ways() {
    let gw = start().await;
    let req = gw.chat_with_header("x-request-id", "client-req-42");
    let (_, h, _) = send(req).await;
    assert_eq!(h["x-request-id"], "client-req-42");
    let req = gw.chat_with_header("x-request-id", "bad id with spaces");
    let (_, h, _) = send(req).await;
    let generated = h["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 32);
    let seen = gw.nim.seen();
    assert_eq!(seen[0].headers["x-request-id"], "client-req-42");
    assert_eq!(seen[1].headers["x-request-id"], generated.as_str());
    let uses = gw.audit_events("use").await;
    assert_eq!(uses[0]["request_id"], "client-req-42");
    assert_eq!(uses[1]["request_id"], generated.as_str());
    gw.stop().await;
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_upstream_is_504() {
    // Nothing listens on this port, and it stays reserved until `_reserved` drops.
    let (_reserved, down) = refused_addr();
    let gw = start_with(Opts::default().upstream_url(format!("http://{down}"))).await;
    let (s, v) = gw.chat().await;
    assert_eq!(s, 502);
    assert_eq!(error_code(&v), "upstream_unreachable");
    assert!(
        !v.to_string().contains("127.0.0.1"),
        "no internal detail to clients: {v}"
    );
    let done = gw.audit_events("done").await;
    assert_eq!(done[0]["status"], 502);
    gw.stop().await;

    let gw = start().await;
    let req = gw.chat_with_header("x-fake-delay-ms", "3000");
    let t = Instant::now();
    let (s, v) = send_json(req).await;
    assert_eq!(s, 504);
    assert_eq!(error_code(&v), "upstream_timeout");
    assert!(t.elapsed() < Duration::from_millis(2900));
    gw.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let gw = start_with(Opts::default().limits("max_body_bytes = 100000")).await;
    let big = format!(r#"{{"model":"m","input":"{}"}}"#, "x".repeat(200_000));
    let (s, v) = send_json(post(&gw.url("/v1/embeddings"), Some(CLIENT_KEY), &big)).await;
    assert_eq!(s, 413);
    assert_eq!(error_code(&v), "request_too_large");
    // Chunked (no Content-Length): the limit applies while streaming.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..20)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'x'; 10_000]))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let req = Request::post(gw.url("/v1/embeddings"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(body)
        .unwrap();
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    // The body streamed, so the upstream saw the start of it; the request was aborted, and
    // the trail says so.
    let done = gw.audit_events("done").await;
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0]["status"].as_u64(), done[0]["reason"].as_str()),
        (Some(413), Some("request_too_large"))
    );
    assert!(
        gw.nim.seen().iter().all(|s| s.body.len() < 200_000),
        "the upstream never got the whole oversized body"
    );
    gw.stop().await;
}

#[tokio::test]
async fn unknown_routes_are_404_after_normalisation() {
    let gw = start().await;
    for p in [
        "/admin",
        "/v2/models",
        "/v1/../admin",
        "/v1/%2e%2e/admin",
        "/",
    ] {
        let (s, v) = send_json(get(&gw.url(p), Some(CLIENT_KEY))).await;
        assert_eq!(s, 404, "{p}");
        assert_eq!(error_code(&v), "not_found");
    }
    let (s, _) = send_json(get(&gw.url("/v1/..%2Fadmin"), Some(CLIENT_KEY))).await;
    assert_eq!(s, 400);
    let (s, _) = send_json(get(&gw.url("/v1//models"), Some(CLIENT_KEY))).await;
    assert_eq!(s, 200);
    assert_eq!(gw.nim.seen()[0].uri, "/v1/models");
    // Records name the path as forwarded (normalised); a path that cannot be normalised is
    // recorded as sent.
    let uses = gw.audit_events("use").await;
    assert_eq!(uses.len(), 1);
    assert_eq!(uses[0]["path"], "/v1/models");
    assert_eq!(uses[0]["method"], "GET");
    let denied = gw.audit_events("denied").await;
    assert!(
        denied.iter().any(|d| d["path"] == "/v1/..%2Fadmin"),
        "{denied:?}"
    );
    assert!(denied.iter().any(|d| d["path"] == "/admin"), "{denied:?}");
    gw.stop().await;
}

async fn rotation_under_traffic(symlink_swap: bool) {
    let gw = start_with(Opts::default().no_key()).await;
    let k1 = NIM_KEY;
    let k2 = "nvapi-test-key-0002";
    gw.nim.set_keys(vec![k1.into(), k2.into()]);
    // Kubernetes-style projected volume: key file -> ..data/key, ..data -> ..<timestamp>.
    let write = |n: u32, key: &str| {
        if symlink_swap {
            let d = gw.dir.path();
            let ts = d.join(format!("..ts{n}"));
            std::fs::create_dir_all(&ts).unwrap();
            std::fs::write(ts.join("k"), format!("{key}\n")).unwrap();
            let tmp = d.join("..data_tmp");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(format!("..ts{n}"), &tmp).unwrap();
            std::fs::rename(&tmp, d.join("..data")).unwrap();
            if !gw.key_file.exists() {
                std::os::unix::fs::symlink("..data/k", &gw.key_file).unwrap();
            }
        } else {
            std::fs::write(&gw.key_file, format!("{key}\n")).unwrap();
        }
    };
    // Not ready without a key.
    let (s, body) = get_admin(gw.admin, "/readyz").await.unwrap();
    assert_eq!(s, 503, "{body}");
    let (s, v) = gw.chat().await;
    assert_eq!(s, 503);
    assert_eq!(error_code(&v), "credential_unavailable");
    write(1, k1);
    gw.wait_ready().await;

    let url = gw.url("/v1/chat/completions");
    let traffic = chat_load(url, 150, Duration::from_millis(3), None);
    tokio::time::sleep(Duration::from_millis(150)).await;
    write(2, k2);
    let statuses = traffic.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "failed requests during rotation: {statuses:?}"
    );
    let seen = gw.nim.seen();
    let last = seen.last().unwrap();
    assert_eq!(
        last.headers[header::AUTHORIZATION],
        format!("Bearer {k2}").as_str(),
        "rotated key in use"
    );
    assert!(seen
        .iter()
        .any(|s| s.headers[header::AUTHORIZATION] == format!("Bearer {k1}").as_str()));
    let rot = gw.audit_events("secret_rotate").await;
    assert_eq!(rot.len(), 2, "{rot:?}");
    assert_eq!(rot[1]["old_key_version"], rot[0]["key_version"]);
    gw.stop().await;
}

#[tokio::test]
async fn key_file_rotation_in_place_under_traffic() {
    rotation_under_traffic(false).await;
}

#[tokio::test]
async fn key_file_rotation_by_symlink_swap_under_traffic() {
    rotation_under_traffic(true).await;
}

#[tokio::test]
async fn bad_new_key_file_keeps_the_old_key() {
    let gw = start().await;
    for bad in ["", "\n", "two words\n", "nvapi\u{7}bell"] {
        std::fs::write(&gw.key_file, bad).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (s, _) = gw.chat().await;
        assert_eq!(s, 200, "bad file {bad:?} must keep the old key");
    }
    std::fs::remove_file(&gw.key_file).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (s, _) = gw.chat().await;
    assert_eq!(s, 200, "a vanished file keeps the old key");
    assert!(gw
        .nim
        .seen()
        .iter()
        .all(|s| s.headers[header::AUTHORIZATION] == format!("Bearer {NIM_KEY}").as_str()));
    let failures = gw.audit_events("secret_failure").await;
    let details: Vec<_> = failures
        .iter()
        .map(|f| f["detail"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        failures.len(),
        3,
        "one record per distinct failure: {details:?}"
    );
    assert!(
        details[0].contains("empty")
            && details[1].contains("whitespace")
            && details[2].contains("cannot read"),
        "{details:?}"
    );
    let all = gw.audit_text();
    assert!(!all.contains("two words") && !all.contains(NIM_KEY));
    gw.stop().await;
}

#[tokio::test]
async fn json_key_file_with_pointer() {
    let gw = start_with(
        Opts::default()
            .no_key()
            .secret("json_pointer = \"/data/data/api_key\""),
    )
    .await;
    std::fs::write(&gw.key_file, format!(r#"{{"request_id":"x","data":{{"data":{{"api_key":"{NIM_KEY}"}},"metadata":{{"version":3}}}}}}"#)).unwrap();
    gw.wait_ready().await;
    let (s, _) = gw.chat().await;
    assert_eq!(s, 200);
    only_our_credential(&gw.nim.seen()[0], NIM_KEY);
    gw.stop().await;
}

#[tokio::test]
async fn custom_upstream_header_template() {
    let gw =
        start_with(Opts::default().upstream("auth_header = \"X-Nim-Key\"\nauth_value = \"{key}\""))
            .await;
    gw.nim.set_keys(vec![]);
    let req = Request::post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("x-nim-key", "client-forged")
        .body(Full::new(Bytes::from(chat_body(false))))
        .unwrap();
    assert_eq!(send(req).await.0, 200);
    let s = &gw.nim.seen()[0];
    assert_eq!(
        s.headers.get_all("x-nim-key").iter().collect::<Vec<_>>(),
        vec![NIM_KEY]
    );
    assert!(s.headers.get(header::AUTHORIZATION).is_none());
    gw.stop().await;
}

#[tokio::test]
async fn health_and_metrics() {
    let gw = start().await;
    assert_eq!(get_admin(gw.admin, "/healthz").await.unwrap().0, 200);
    let (s, b) = get_admin(gw.admin, "/readyz").await.unwrap();
    assert_eq!((s, b.contains("\"key\":\"ok\"")), (200, true));
    gw.chat().await;
    send_json(get(&gw.url("/v1/models"), Some("nope"))).await;
    let (_, m) = get_admin(gw.admin, "/metrics").await.unwrap();
    assert!(
        m.contains("nimgate_responses_total{class=\"2xx\"} 1"),
        "{m}"
    );
    assert!(m.contains("nimgate_denied_total{reason=\"invalid_api_key\"} 1"));
    assert!(m.contains("nimgate_key_loaded{upstream=\"default\"} 1"));
    assert!(!m.contains(NIM_KEY) && !m.contains("ngk_"));
    // The gateway's client port does not serve admin routes.
    assert_eq!(
        send_json(get(&gw.url("/healthz"), Some(CLIENT_KEY)))
            .await
            .0,
        404
    );
    gw.stop().await;
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = start_with(Opts::default().limits("max_connections = 2")).await;
    // Two idle HTTP/2 connections (preface + empty SETTINGS) hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), third.read_to_end(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "third connection must be closed without a response: {:?}",
        String::from_utf8_lossy(&buf)
    );
    // Freeing a slot lets clients in again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.chat().await.0, 200);
    gw.stop().await;
}
