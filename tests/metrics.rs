#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! The admin `/metrics` of the built binary against real Prometheus tooling: `promtool check
//! metrics` on the live exposition after mixed traffic (two clients, chat, SSE, embeddings, a
//! rate-limited client, an unauthenticated caller), and a real `prometheus` server (its own
//! config and data dir, port 0, ended by pid) scraping the admin listener while the test sees
//! request and token counters move through its HTTP API.

mod common;

use common::bin::*;
use common::*;
use http_body_util::BodyExt;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const MODEL: &str = "meta/llama-3.1-8b-instruct";

/// The binary's config: `team-a` unlimited, `team-b` at one request per minute.
fn write_config(dir: &Path, nim: SocketAddr) -> std::path::PathBuf {
    common::bin::write_config(dir, "nimgate", nim, ("", "rpm = 1\nburst = 1"), "")
}

async fn metrics_text(admin: SocketAddr) -> String {
    let (s, m) = get_admin(admin, "/metrics").await.unwrap();
    assert_eq!(s, 200);
    m
}

/// The value of the sample that is exactly `series` (name plus its labels as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `promtool check metrics` on `text`: (success, its output).
fn promtool(text: &str) -> (bool, String) {
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), msg)
}

async fn chat_stream_to_end(url: &str, key: &str) -> u16 {
    let resp = client()
        .request(post(url, Some(key), &chat_body(true)))
        .await
        .unwrap();
    let s = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_and_count_by_client_operation_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let (_nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(5)).await;
    let p = spawn_serve(&write_config(dir.path(), nim_addr), None);
    wait_ready(p.admin).await;
    let chat = format!("http://{}/v1/chat/completions", p.gw);
    let emb = format!("http://{}/v1/embeddings", p.gw);
    // Before any traffic the exposition is already valid.
    let (ok, msg) = promtool(&metrics_text(p.admin).await);
    assert!(ok, "promtool on the idle exposition:\n{msg}");

    for _ in 0..2 {
        let (s, _) = send_json(post(&chat, Some(CLIENT_KEY), &chat_body(false))).await;
        assert_eq!(s, 200);
    }
    assert_eq!(chat_stream_to_end(&chat, CLIENT_KEY).await, 200);
    let body = format!(r#"{{"model":"{MODEL}","input":"x"}}"#);
    assert_eq!(send_json(post(&emb, Some(CLIENT_KEY), &body)).await.0, 200);
    // team-b: one request per minute, so the second is refused with 429.
    assert_eq!(
        send_json(post(&chat, Some(CLIENT_KEY_B), &chat_body(false)))
            .await
            .0,
        200
    );
    assert_eq!(
        send_json(post(&chat, Some(CLIENT_KEY_B), &chat_body(false)))
            .await
            .0,
        429
    );
    assert_eq!(send_json(post(&chat, Some("ngk_nope"), "{}")).await.0, 401);

    let m = metrics_text(p.admin).await;
    let (ok, msg) = promtool(&m);
    assert!(ok, "promtool check metrics failed:\n{msg}\n{m}");
    let rq = |c: &str, op: &str, up: &str, class: &str| {
        sample(&m, &format!("nimgate_requests_total{{client=\"{c}\",operation=\"{op}\",upstream=\"{up}\",status_class=\"{class}\"}}"))
    };
    assert_eq!(rq("team-a", "chat", "default", "2xx"), Some(3.0), "{m}");
    assert_eq!(rq("team-a", "embeddings", "default", "2xx"), Some(1.0));
    assert_eq!(rq("team-b", "chat", "default", "2xx"), Some(1.0));
    assert_eq!(rq("team-b", "chat", "none", "4xx"), Some(1.0));
    assert_eq!(rq("unauthenticated", "chat", "none", "4xx"), Some(1.0));
    assert_eq!(
        sample(
            &m,
            "nimgate_limit_rejections_total{client=\"team-b\",reason=\"rate_limit_exceeded\"}"
        ),
        Some(1.0)
    );
    // The fake NIM reports 12 prompt + 5 completion tokens per chat (the stream's usage chunk
    // too) and 4 prompt tokens per embedding.
    let tok = |c: &str, kind: &str| {
        sample(
            &m,
            &format!("nimgate_tokens_total{{client=\"{c}\",model=\"{MODEL}\",kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(tok("team-a", "prompt"), Some(3.0 * 12.0 + 4.0), "{m}");
    assert_eq!(tok("team-b", "completion"), Some(5.0));
    let usage_count = |t: &str| {
        sample(&m, &format!("gen_ai_client_token_usage_count{{gen_ai_token_type=\"{t}\",gen_ai_request_model=\"{MODEL}\"}}"))
    };
    assert_eq!(usage_count("input"), Some(5.0));
    assert_eq!(
        sample(
            &m,
            &format!("nimgate_stream_time_to_first_token_seconds_count{{model=\"{MODEL}\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "nimgate_upstream_time_to_first_byte_seconds_count{upstream=\"default\"}"
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &m,
            "nimgate_request_duration_seconds_count{operation=\"chat\"}"
        ),
        Some(6.0)
    );
    assert!(sample(&m, "nimgate_response_bytes_total{client=\"team-a\"}").unwrap() > 0.0);
    assert!(sample(&m, "nimgate_request_bytes_total{client=\"team-b\"}").unwrap() > 0.0);
    // Every response has ended: nothing in flight, no stream open.
    assert_eq!(sample(&m, "nimgate_requests_in_flight"), Some(0.0));
    assert_eq!(sample(&m, "nimgate_sse_streams_open"), Some(0.0));
    assert_eq!(
        sample(&m, "nimgate_key_generation{upstream=\"default\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "nimgate_secret_failures_total{upstream=\"default\",op=\"fetch\"}"
        ),
        Some(0.0)
    );
    assert!(sample(&m, "nimgate_audit_write_duration_seconds_count").unwrap() > 0.0);
    assert!(!m.contains(NIM_KEY) && !m.contains("ngk_"));
}

/// TCP ports `pid` listens on: its socket inodes (`/proc/<pid>/fd`) matched against the
/// LISTEN rows of `/proc/net/tcp{,6}`.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| {
                let l = std::fs::read_link(e.ok()?.path()).ok()?;
                let s = l.to_str()?;
                Some(s.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
            })
            .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                if let Some(port) = f[1].rsplit(':').next() {
                    ports.push(u16::from_str_radix(port, 16).unwrap());
                }
            }
        }
    }
    ports
}

fn observability() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/observability")
}

/// GET a Prometheus API path: its JSON.
async fn api(prom: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let resp = client()
        .request(get(&format!("http://{prom}{path}"), None))
        .await
        .ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

/// `/api/v1/query` for PromQL `q`.
async fn query_json(prom: SocketAddr, q: &str) -> Option<serde_json::Value> {
    let mut path = String::from("/api/v1/query?query=");
    for b in q.bytes() {
        if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
            path.push(b as char);
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    api(prom, &path).await
}

/// A PromQL instant query's single value (`None`: no result yet).
async fn query(prom: SocketAddr, q: &str) -> Option<f64> {
    let v = query_json(prom, q).await?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Every query of the Grafana dashboard parses and runs on the real Prometheus, and every
/// metric family it names is one nimgate exposes.
async fn dashboard_queries_run(prom: SocketAddr, admin: SocketAddr) {
    let text = std::fs::read_to_string(observability().join("nimgate-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let live = metrics_text(admin).await;
    let mut n = 0;
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let q = expr
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
                .replace("$client", ".*");
            let v = query_json(prom, &q).await.unwrap();
            assert_eq!(v["status"], "success", "{q}: {v}");
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("nimgate_") || w.starts_with("gen_ai_client"))
            {
                let family = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                assert!(
                    live.contains(&format!("# TYPE {family} ")),
                    "dashboard uses {name}, not on /metrics"
                );
            }
            n += 1;
        }
    }
    assert!(n >= 16, "{n} dashboard queries");
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = observability();
    for args in [
        vec!["check", "rules", "nimgate-alerts.yml"],
        vec!["test", "rules", "nimgate-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Poll `q` until it equals `want` (or 60 s pass): its last value.
async fn wait_for(prom: SocketAddr, q: &str, want: f64) -> Option<f64> {
    let mut last = None;
    for _ in 0..300 {
        last = query(prom, q).await;
        if last == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_admin_listener_and_sees_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let (_nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(5)).await;
    let gw = spawn_serve(&write_config(dir.path(), nim_addr), None);
    wait_ready(gw.admin).await;
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: nimgate\n    static_configs:\n      - targets: ['{}']\n",
            gw.admin,
            rules = observability().join("nimgate-alerts.yml").display(),
        ),
    )
    .unwrap();
    let data = dir.path().join("prom-data");
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", prom_cfg.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus; .ci/run installs it)");
    let pid = prom.id();
    let gw_addr = gw.gw;
    let gw_admin = gw.admin;
    let result = async move {
        let mut port = None;
        for _ in 0..150 {
            port = listening_ports(pid).first().copied();
            if port.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let prom_addr: SocketAddr = format!("127.0.0.1:{}", port.expect("prometheus listening"))
            .parse()
            .unwrap();
        assert_eq!(
            wait_for(prom_addr, "up{job=\"nimgate\"}", 1.0).await,
            Some(1.0),
            "the nimgate target never came up"
        );
        let chat = format!("http://{gw_addr}/v1/chat/completions");
        for _ in 0..3 {
            let (s, _) = send_json(post(&chat, Some(CLIENT_KEY), &chat_body(false))).await;
            assert_eq!(s, 200);
        }
        let q = "sum(nimgate_requests_total{client=\"team-a\",operation=\"chat\",status_class=\"2xx\"})";
        assert_eq!(wait_for(prom_addr, q, 3.0).await, Some(3.0));
        let t = format!("sum(nimgate_tokens_total{{client=\"team-a\",model=\"{MODEL}\"}})");
        assert_eq!(wait_for(prom_addr, &t, 3.0 * 17.0).await, Some(51.0));
        // More traffic moves the same series.
        assert_eq!(chat_stream_to_end(&chat, CLIENT_KEY).await, 200);
        assert_eq!(wait_for(prom_addr, q, 4.0).await, Some(4.0));
        let h = format!("sum(gen_ai_client_token_usage_count{{gen_ai_request_model=\"{MODEL}\"}})");
        assert_eq!(wait_for(prom_addr, &h, 8.0).await, Some(8.0));
        dashboard_queries_run(prom_addr, gw_admin).await;
        // The alerting rules loaded and evaluate without error against the live series.
        let all = std::fs::read_to_string(observability().join("nimgate-alerts.yml"))
            .unwrap()
            .matches("- alert:")
            .count();
        let mut healthy = 0;
        for _ in 0..100 {
            let v = api(prom_addr, "/api/v1/rules").await.unwrap_or_default();
            let rules: Vec<&serde_json::Value> = v["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            healthy = rules.iter().filter(|r| r["health"] == "ok").count();
            if healthy == all {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(healthy, all, "alert rules not all evaluated ok");
    };
    // End prometheus (by its pid) whether or not the checks passed.
    let outcome = tokio::spawn(result).await;
    kill_pid(pid, "-TERM");
    let _ = prom.wait();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
