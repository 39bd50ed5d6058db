#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Limits shared by a fleet (issue 19): two `nimgate` processes (the built binary) against one
//! real `redis-server` (Debian package) share a client's request rate and token budget; Redis
//! killed mid-traffic gives `failure_mode` open and closed as configured and recovery without a
//! restart; the `x-ratelimit-*` headers; the official `openai` SDK backing off on a 429.

mod common;

use common::bin::{spawn_serve, wait_ready, Proc};
use common::redis::{cli, Redis};
use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn config(dir: &Path, name: &str, nim: SocketAddr, client: &str, ratelimit: &str) -> PathBuf {
    let ratelimit = format!("[ratelimit]\n{ratelimit}");
    common::bin::write_config(dir, name, nim, (client, ""), &ratelimit)
}

async fn spawn_ready(cfg: &Path) -> Proc {
    let p = spawn_serve(cfg, Some("info"));
    wait_ready(p.admin).await;
    p
}

async fn chat(gw: SocketAddr, key: &str) -> (u16, http::HeaderMap, serde_json::Value) {
    let url = format!("http://{gw}/v1/chat/completions");
    let (s, h, b) = send(post(&url, Some(key), &chat_body(false))).await;
    (s, h, serde_json::from_slice(&b).unwrap_or_default())
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_clients_request_limit_through_redis() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let (_nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(1)).await;
    let rl = redis.table();
    // 60 a minute, burst 10: over the few seconds of this test the fleet may accept 10 plus
    // about one a second, wherever the requests land.
    let client = "rpm = 60\nburst = 10";
    let a = spawn_ready(&config(dir.path(), "a", nim_addr, client, &rl)).await;
    let b = spawn_ready(&config(dir.path(), "b", nim_addr, client, &rl)).await;
    let t = std::time::Instant::now();
    let mut accepted = 0;
    let mut refused = 0;
    let mut remaining = Vec::new();
    for i in 0..40 {
        let gw = if i % 2 == 0 { a.gw } else { b.gw };
        let (s, h, v) = chat(gw, CLIENT_KEY).await;
        match s {
            200 => {
                accepted += 1;
                assert_eq!(header(&h, "x-ratelimit-limit-requests"), "60");
                remaining.push(header(&h, "x-ratelimit-remaining-requests").to_string());
                assert!(!header(&h, "x-ratelimit-reset-requests").is_empty());
            }
            429 => {
                refused += 1;
                assert_eq!(v["error"]["code"], "rate_limit_exceeded");
                assert!(!header(&h, "retry-after").is_empty());
            }
            other => panic!("status {other}: {v}"),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "fleet of 2: {accepted} accepted, {refused} refused in {secs:.2}s; remaining {remaining:?}"
    );
    let allowed = 10.0 + secs.ceil();
    assert!(
        accepted >= 10 && f64::from(accepted) <= allowed * 1.1,
        "{accepted} accepted by the fleet; the shared limit allows about {allowed}"
    );
    assert_eq!(
        remaining.first().map(String::as_str),
        Some("9"),
        "one fleet-wide count"
    );
    // A client without limits never reaches Redis.
    for gw in [a.gw, b.gw] {
        assert_eq!(chat(gw, CLIENT_KEY_B).await.0, 200);
    }
    let keys = cli(redis.port, &["KEYS", "nimgate:*"]).unwrap();
    assert!(keys.contains("nimgate:{team-a}:rq"), "{keys}");
    assert!(!keys.contains("team-b"), "{keys}");
    let (_, m) = get_admin(a.admin, "/metrics").await.unwrap();
    assert!(m.contains("nimgate_ratelimit_backend_up 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_applies_failure_mode_and_recovery_needs_no_restart() {
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let (_nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(1)).await;
    let rl = |mode: &str| {
        format!(
            "backend = \"redis\"\nredis_url = \"{}\"\ntimeout = \"200ms\"\nfailure_mode = \"{mode}\"",
            redis.url()
        )
    };
    let client = "rpm = 6000";
    let open = spawn_ready(&config(dir.path(), "open", nim_addr, client, &rl("open"))).await;
    let closed = spawn_ready(&config(
        dir.path(),
        "closed",
        nim_addr,
        client,
        &rl("closed"),
    ))
    .await;
    assert_eq!(chat(open.gw, CLIENT_KEY).await.0, 200);
    assert_eq!(chat(closed.gw, CLIENT_KEY).await.0, 200);
    redis.kill();
    for _ in 0..5 {
        assert_eq!(chat(open.gw, CLIENT_KEY).await.0, 200, "open: served");
        let (s, _, v) = chat(closed.gw, CLIENT_KEY).await;
        assert_eq!(s, 503, "closed: refused: {v}");
        assert_eq!(v["error"]["code"], "rate_limit_unavailable");
        // A client without limits does not depend on Redis in either mode.
        assert_eq!(chat(closed.gw, CLIENT_KEY_B).await.0, 200);
    }
    let (_, m) = get_admin(closed.admin, "/metrics").await.unwrap();
    assert!(m.contains("nimgate_ratelimit_backend_up 0"), "{m}");
    assert!(m.contains("nimgate_ratelimit_backend_fallbacks_total{mode=\"closed\"}"));
    let restarted = Redis::start_on(redis.port).expect("redis restarts on its port");
    let mut back = false;
    for _ in 0..50 {
        if chat(closed.gw, CLIENT_KEY).await.0 == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back,
        "closed mode serves again once Redis is back, without a restart"
    );
    let keys = cli(restarted.port, &["KEYS", "nimgate:*"]).unwrap();
    assert!(keys.contains("team-a"), "limits are shared again: {keys}");
    for p in [&open, &closed] {
        let log = p.stderr.lock().unwrap().clone();
        assert!(log.contains("rate-limit backend unreachable"), "{log}");
        assert_eq!(
            log.matches("rate-limit backend unreachable").count(),
            1,
            "once per outage"
        );
    }
    let log = closed.stderr.lock().unwrap().clone();
    assert!(log.contains("rate-limit backend reachable again"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_budget_is_charged_from_usage_across_two_replicas() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let (_nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(1)).await;
    let rl = redis.table();
    // Each chat answer uses 17 tokens; 40 a minute admits three (0, 17, 34 spent) and refuses
    // the fourth: the overshoot (51 − 40) is one request's worth.
    let a = spawn_ready(&config(dir.path(), "a", nim_addr, "tpm = 40", &rl)).await;
    let b = spawn_ready(&config(dir.path(), "b", nim_addr, "tpm = 40", &rl)).await;
    let mut seen = Vec::new();
    let mut last_tk = String::new();
    for (i, gw) in [a.gw, b.gw, a.gw, b.gw, a.gw].into_iter().enumerate() {
        let (s, h, v) = chat(gw, CLIENT_KEY).await;
        seen.push((s, header(&h, "x-ratelimit-remaining-tokens").to_string()));
        if i >= 3 {
            assert_eq!(s, 429, "request {i}: {v}");
            assert_eq!(v["error"]["code"], "tokens_exhausted");
            assert!(header(&h, "retry-after").parse::<u64>().unwrap() >= 1);
        } else {
            assert_eq!(s, 200, "request {i}: {v}");
            assert_eq!(header(&h, "x-ratelimit-limit-tokens"), "40");
        }
        // The charge is written after the response ends: wait for it to land in Redis.
        if s == 200 {
            let before = last_tk.clone();
            for _ in 0..100 {
                last_tk = cli(redis.port, &["GET", "nimgate:{team-a}:tk"]).unwrap_or_default();
                if last_tk != before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_ne!(last_tk, before, "request {i} was charged");
        }
    }
    eprintln!("{seen:?}");
    assert_eq!(
        seen.iter()
            .map(|s| s.1.as_str())
            .take(3)
            .collect::<Vec<_>>(),
        ["40", "23", "6"],
        "remaining tokens as the fleet spends them"
    );
}

#[tokio::test]
async fn local_token_budgets_refuse_before_the_nim_and_say_when() {
    let gw = start_with(Opts::default().client("tpm = 40")).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (s, h, v) = chat(gw.addr, CLIENT_KEY).await;
        if s == 429 {
            assert_eq!(v["error"]["code"], "tokens_exhausted");
            assert!(header(&h, "retry-after").parse::<u64>().unwrap() >= 1);
        }
        statuses.push(s);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(
        gw.nim.requests.load(std::sync::atomic::Ordering::Relaxed),
        3,
        "the refused request never reached the NIM"
    );
    assert!(gw
        .audit_events("denied")
        .await
        .iter()
        .any(|d| d["reason"] == "tokens_exhausted" && d["status"] == 429));
    assert_eq!(
        chat(gw.addr, CLIENT_KEY_B).await.0,
        200,
        "other clients unaffected"
    );
    gw.stop().await;

    let gw = start_with(Opts::default().client("tokens_per_day = 30")).await;
    let (s, h, _) = chat(gw.addr, CLIENT_KEY).await;
    assert_eq!((s, header(&h, "x-ratelimit-remaining-tokens")), (200, "30"));
    let (s, h, _) = chat(gw.addr, CLIENT_KEY).await;
    assert_eq!((s, header(&h, "x-ratelimit-remaining-tokens")), (200, "13"));
    let (s, h, _) = chat(gw.addr, CLIENT_KEY).await;
    assert_eq!(s, 429);
    let wait: u64 = header(&h, "retry-after").parse().unwrap();
    assert!((1..=86_400).contains(&wait), "until UTC midnight: {wait}");
    gw.stop().await;
}

/// The official `openai` SDK (PyPI `openai`, installed by .ci/run) paces itself on nimgate's 429:
/// with retries it waits `Retry-After` and succeeds; without, it raises `RateLimitError`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_backs_off_on_a_429_and_reads_the_headers() {
    let gw = start_with(Opts::default().client("rpm = 60\nburst = 1")).await;
    let script = r#"
import sys, time, openai
base, key = sys.argv[1], sys.argv[2]
msgs = [{"role": "user", "content": "hi"}]
model = "meta/llama-3.1-8b-instruct"
c = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=3)
first = c.chat.completions.with_raw_response.create(model=model, messages=msgs)
print("first", first.http_response.status_code, first.headers.get("x-ratelimit-remaining-requests"))
try:
    openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0).chat.completions.create(model=model, messages=msgs)
    print("no-retry ok")
except openai.RateLimitError as e:
    print("no-retry", e.status_code, e.response.headers.get("retry-after"), e.code)
t = time.monotonic()
second = c.chat.completions.with_raw_response.create(model=model, messages=msgs)
print("retried", second.http_response.status_code, round(time.monotonic() - t, 1))
"#;
    let base = format!("http://{}", gw.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", script, &base, CLIENT_KEY])
            .output()
            .expect("python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    eprintln!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "first 200 0");
    assert_eq!(lines[1], "no-retry 429 1 rate_limit_exceeded");
    assert!(lines[2].starts_with("retried 200 "), "{stdout}");
    let waited: f64 = lines[2].rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        waited >= 0.5,
        "the SDK waited for Retry-After before retrying: {waited}s"
    );
    let denied = gw.audit_events("denied").await;
    let limited = denied
        .iter()
        .filter(|d| d["reason"] == "rate_limit_exceeded")
        .count();
    assert!(
        limited >= 2,
        "the no-retry 429 and the SDK's first try: {limited}"
    );
    assert_eq!(
        gw.audit_events("use").await.len(),
        2,
        "two requests reached the NIM"
    );
    gw.stop().await;
}

/// Usage is always known for a budgeted client: a streamed request that did not ask for usage
/// gets `stream_options.include_usage` added on the way to the NIM, the usage event the NIM then
/// sends is charged and removed, and the client receives exactly the stream it asked for.
#[tokio::test]
async fn streamed_requests_of_budgeted_clients_are_charged_without_changing_their_stream() {
    use http_body_util::BodyExt;
    let gw = start_with(Opts::default().client("tpm = 1000")).await;
    let url = gw.url("/v1/chat/completions");
    let body = r#"{"model":"meta/llama-3.1-8b-instruct","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let stream = |key: &'static str, body: &'static str| {
        let url = url.clone();
        async move {
            let resp = client().request(post(&url, Some(key), body)).await.unwrap();
            let h = resp.headers().clone();
            let b = resp.into_body().collect().await.unwrap().to_bytes();
            (h, String::from_utf8(b.to_vec()).unwrap())
        }
    };
    let (h, text) = stream(CLIENT_KEY, body).await;
    assert_eq!(header(&h, "x-ratelimit-remaining-tokens"), "1000");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(
        text.matches("tok").count(),
        5,
        "every content event: {text}"
    );
    assert!(
        !text.contains("\"usage\""),
        "the usage event nimgate asked for is removed: {text}"
    );
    let sent = gw.nim.seen().last().unwrap().body.clone();
    let sent: serde_json::Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "asked for on the client's behalf"
    );
    // 12 prompt + 5 completion tokens were charged.
    let (s, h, _) = chat(gw.addr, CLIENT_KEY).await;
    assert_eq!(
        (s, header(&h, "x-ratelimit-remaining-tokens")),
        (200, "983")
    );
    let done = gw.audit_events("done").await;
    assert_eq!(done[0]["usage"]["total_tokens"], 17, "{:?}", done[0]);
    // A client that asked for usage itself still gets it.
    let asked =
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let (_, text) = stream(CLIENT_KEY, asked).await;
    assert!(text.contains("\"usage\":{"), "{text}");
    // A client without a budget: the body goes to the NIM exactly as sent.
    let (_, text) = stream(CLIENT_KEY_B, body).await;
    assert!(!text.contains("\"usage\""));
    assert_eq!(&gw.nim.seen().last().unwrap().body[..], body.as_bytes());
    gw.stop().await;
}

/// One audit story for a fleet: two gateways' trails merged by timestamp, as a log pipeline
/// merges pods, verify as two chains; an edited record and a deleted one are still caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interleaved_stream_of_two_chains_verifies_per_chain() {
    let a = start_with(Opts::default().audit("instance = \"pod-a\"")).await;
    let b = start_with(Opts::default().audit("instance = \"pod-b\"")).await;
    for _ in 0..4 {
        assert_eq!(chat(a.addr, CLIENT_KEY).await.0, 200);
        assert_eq!(chat(b.addr, CLIENT_KEY).await.0, 200);
    }
    let (fa, fb) = (a.audit_file.clone(), b.audit_file.clone());
    let _keep_a = a.stop().await;
    let _keep_b = b.stop().await;
    let mut lines: Vec<String> = [&fa, &fb]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    // What a log collector does: order by timestamp (stable, so each chain keeps its order).
    lines.sort_by_key(|l| {
        serde_json::from_str::<serde_json::Value>(l).unwrap()["ts"]
            .as_str()
            .unwrap()
            .to_string()
    });
    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("merged.jsonl");
    let write = |ls: &[String]| std::fs::write(&merged, ls.join("\n") + "\n").unwrap();
    write(&lines);
    let verify = |json: bool| {
        let args: &[&str] = if json {
            &["audit", "verify", "--json"]
        } else {
            &["audit", "verify"]
        };
        let out = common::bin::run_bin(args, &[merged.as_path()]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = verify(true);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["interleaved"], true, "{v}");
    let chains = v["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2, "{v}");
    for (c, name) in chains.iter().zip(["pod-a-", "pod-b-"]) {
        assert!(c["chain"].as_str().unwrap().starts_with(name), "{c}");
        assert_eq!(c["first_seq"], 0);
        assert_eq!(c["partial_start"], false);
        assert!(
            c["records"].as_u64().unwrap() >= 9,
            "start + 4 × (use, done): {c}"
        );
    }
    let (_, text) = verify(false);
    assert!(text.contains("2 interleaved chains"), "{text}");
    // Edit a record of pod-b's chain: the next record of that chain no longer links.
    let i = lines
        .iter()
        .position(|l| l.contains("\"chain\":\"pod-b-") && l.contains("\"event\":\"done\""))
        .unwrap();
    let mut edited = lines.clone();
    edited[i] = edited[i].replace("\"status\":200", "\"status\":201");
    write(&edited);
    let (code, text) = verify(false);
    assert_eq!(code, Some(1));
    assert!(text.contains("was edited"), "{text}");
    // Delete one of pod-a's records from the middle: a gap in that chain only.
    let j = lines
        .iter()
        .position(|l| l.contains("\"chain\":\"pod-a-") && l.contains("\"event\":\"use\""))
        .unwrap();
    let mut cut = lines.clone();
    cut.remove(j);
    write(&cut);
    let (code, text) = verify(false);
    assert_eq!(code, Some(1));
    assert!(
        text.contains("records missing") && text.contains("1 record(s) deleted"),
        "{text}"
    );
}
