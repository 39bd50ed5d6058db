#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Traces of the built binary, received by an in-test OTLP/HTTP collector (a hyper server that
//! decodes `ExportTraceServiceRequest` with the OpenTelemetry protobuf schema): the SERVER span
//! continues the client's `traceparent`, the CLIENT span is the parent the fake NIM receives,
//! GenAI attributes carry their values, a key refresh-and-retry shows two attempts, no span
//! holds a key or a prompt, and a dead or hanging collector changes no request's status.

mod common;

use bytes::Bytes;
use common::bin::*;
use common::*;
use http_body_util::{BodyExt, Full};
use nimgate::auth::key_digest_hex;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

const MODEL: &str = "meta/llama-3.1-8b-instruct";
const PROMPT: &str = "prompt-text-that-must-not-leave-nimgate";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// What the collector received: decoded spans (with their resource's service name) and every
/// raw request body.
#[derive(Default)]
struct Received {
    spans: Vec<(String, Span)>,
    raw: Vec<Bytes>,
    /// The `x-collector-token` header of each export.
    tokens: Vec<String>,
}

/// An OTLP/HTTP collector on 127.0.0.1:0; `hang`: accept and never answer.
async fn collector(hang: bool) -> (Arc<Mutex<Received>>, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Received::default()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let g = g.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let g = g.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let token = req
                                .headers()
                                .get("x-collector-token")
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            if hang {
                                std::future::pending::<()>().await;
                            }
                            let msg = ExportTraceServiceRequest::decode(body.clone()).unwrap();
                            let mut r = g.lock().unwrap();
                            r.raw.push(body);
                            r.tokens.push(token);
                            for rs in msg.resource_spans {
                                let service = rs
                                    .resource
                                    .iter()
                                    .flat_map(|r| &r.attributes)
                                    .find(|a| a.key == "service.name")
                                    .and_then(|a| match &a.value.as_ref()?.value {
                                        Some(Any::StringValue(s)) => Some(s.clone()),
                                        _ => None,
                                    })
                                    .unwrap_or_default();
                                for ss in rs.scope_spans {
                                    for sp in ss.spans {
                                        r.spans.push((service.clone(), sp));
                                    }
                                }
                            }
                            let out = ExportTraceServiceResponse::default().encode_to_vec();
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::from(out)))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (got, addr)
}

fn write_config(dir: &Path, nim: SocketAddr, telemetry: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("key"), format!("{NIM_KEY}\n")).unwrap();
    let cfg = dir.join("nimgate.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
[admin]
listen = "127.0.0.1:0"
[upstream]
url = "http://{nim}"
[secret]
source = "file"
path = "{key}"
poll_interval = "60s"
[[clients]]
id = "team-a"
key_sha256 = "{a}"
[audit]
path = "{audit}"
{telemetry}
"#,
            key = dir.join("key").display(),
            a = key_digest_hex(CLIENT_KEY),
            audit = dir.join("audit.jsonl").display(),
        ),
    )
    .unwrap();
    cfg
}

fn telemetry_table(collector: SocketAddr, extra: &str) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"http://{collector}\"\nservice_name = \"nimgate-test\"\nexport_interval = \"100ms\"\n{extra}"
    )
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Any> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn str_attr<'a>(s: &'a Span, key: &str) -> &'a str {
    match attr(s, key) {
        Some(Any::StringValue(v)) => v,
        other => panic!("{key}: {other:?} on span {:?}", s.name),
    }
}

fn int_attr(s: &Span, key: &str) -> i64 {
    match attr(s, key) {
        Some(Any::IntValue(v)) => *v,
        other => panic!("{key}: {other:?} on span {:?}", s.name),
    }
}

/// Wait (up to 20 s) until the spans satisfy `done`; return them.
async fn spans_until(
    got: &Arc<Mutex<Received>>,
    done: impl Fn(&[(String, Span)]) -> bool,
) -> Vec<Span> {
    for _ in 0..200 {
        {
            let r = got.lock().unwrap();
            if done(&r.spans) {
                return r.spans.iter().map(|(_, s)| s.clone()).collect();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = got.lock().unwrap();
    panic!(
        "spans never arrived: {:#?}",
        r.spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
    );
}

fn chat_with(prompt: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{MODEL}","stream":{stream},"stream_options":{{"include_usage":true}},"messages":[{{"role":"user","content":"{prompt}"}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_client_trace_into_the_nim_with_genai_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let (got, col) = collector(false).await;
    let (nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(5)).await;
    // Export headers come from a file (a collector token), never from the config or env.
    let headers = dir.path().join("otel-headers");
    std::fs::write(&headers, "# collector auth\nx-collector-token: tok-123\n").unwrap();
    let extra = format!("headers_file = \"{}\"\n", headers.display());
    let cfg = write_config(dir.path(), nim_addr, &telemetry_table(col, &extra));
    let p = spawn_serve(&cfg, Some("debug"));
    wait_ready(p.admin).await;
    let url = format!("http://{}/v1/chat/completions", p.gw);
    let mut req = post(&url, Some(CLIENT_KEY), &chat_with(PROMPT, false));
    req.headers_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
    );
    req.headers_mut()
        .insert("tracestate", "vendor=opaque".parse().unwrap());
    let (s, _) = send_json(req).await;
    assert_eq!(s, 200);
    // A streamed request without a traceparent starts a trace of its own.
    let resp = client()
        .request(post(&url, Some(CLIENT_KEY), &chat_with(PROMPT, true)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();

    let spans = spans_until(&got, |s| {
        s.iter()
            .filter(|(_, x)| x.kind == SpanKind::Server as i32)
            .count()
            >= 2
            && s.iter()
                .filter(|(_, x)| x.kind == SpanKind::Client as i32)
                .count()
                >= 2
    })
    .await;
    let trace = hex::decode(TRACE).unwrap();
    let server: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    let sv = server
        .iter()
        .find(|s| s.trace_id == trace)
        .expect("server span in the client's trace");
    assert_eq!(
        sv.parent_span_id,
        hex::decode(PARENT).unwrap(),
        "child of the client's span"
    );
    assert_eq!(sv.name, format!("chat {MODEL}"));
    assert_eq!(str_attr(sv, "http.request.method"), "POST");
    assert_eq!(str_attr(sv, "url.path"), "/v1/chat/completions");
    assert_eq!(int_attr(sv, "http.response.status_code"), 200);
    assert_eq!(str_attr(sv, "client.address"), "127.0.0.1");
    assert_eq!(str_attr(sv, "gen_ai.operation.name"), "chat");
    assert_eq!(str_attr(sv, "gen_ai.provider.name"), "nvidia_nim");
    assert_eq!(str_attr(sv, "gen_ai.request.model"), MODEL);
    assert_eq!(str_attr(sv, "gen_ai.response.model"), MODEL);
    assert_eq!(int_attr(sv, "gen_ai.usage.input_tokens"), 12);
    assert_eq!(int_attr(sv, "gen_ai.usage.output_tokens"), 5);
    assert_eq!(str_attr(sv, "nimgate.client_id"), "team-a");
    assert!(!str_attr(sv, "nimgate.key_version").is_empty());
    assert!(!str_attr(sv, "nimgate.request_id").is_empty());
    assert!(attr(sv, "error.type").is_none());

    let cl = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32 && s.trace_id == trace)
        .expect("client span");
    assert_eq!(cl.parent_span_id, sv.span_id, "CLIENT is a child of SERVER");
    assert_eq!(cl.name, "POST");
    assert_eq!(str_attr(cl, "server.address"), "127.0.0.1");
    assert_eq!(int_attr(cl, "server.port"), i64::from(nim_addr.port()));
    assert_eq!(int_attr(cl, "http.response.status_code"), 200);

    // The NIM got a traceparent with the same trace and the CLIENT span as parent, and the
    // client's tracestate carried on (W3C Trace Context: vendors propagate it).
    let seen = nim.seen();
    let first = &seen[0];
    assert_eq!(
        first.headers["traceparent"],
        format!("00-{TRACE}-{}-01", hex::encode(&cl.span_id)).as_str()
    );
    assert_eq!(first.headers["tracestate"], "vendor=opaque");

    // The streamed request: its own trace (no parent), time to first chunk recorded.
    let st = server.iter().find(|s| s.trace_id != trace).unwrap();
    assert!(st.parent_span_id.is_empty());
    match attr(st, "nimgate.time_to_first_chunk_ms") {
        Some(Any::DoubleValue(v)) => assert!(*v > 0.0),
        other => panic!("time_to_first_chunk_ms: {other:?}"),
    }
    let stream_tp = seen[1].headers["traceparent"].to_str().unwrap().to_string();
    assert!(
        stream_tp.contains(&hex::encode(&st.trace_id)),
        "{stream_tp}"
    );

    // `use`/`done` records carry the trace id.
    let audit = read_audit(&dir.path().join("audit.jsonl"));
    for ev in ["use", "done"] {
        assert!(
            audit
                .iter()
                .any(|r| r["event"] == ev && r["trace_id"] == TRACE),
            "{ev} record without trace_id"
        );
    }
    assert!(got.lock().unwrap().tokens.iter().all(|t| t == "tok-123"));
    assert!(
        !p.stderr.lock().unwrap().contains("tok-123"),
        "collector token logged"
    );
    // No key, client key or prompt in anything exported.
    let raw = got.lock().unwrap().raw.clone();
    assert!(got
        .lock()
        .unwrap()
        .spans
        .iter()
        .all(|(svc, _)| svc == "nimgate-test"));
    for b in &raw {
        for secret in [NIM_KEY, CLIENT_KEY, PROMPT] {
            assert!(
                memchr::memmem::find(b, secret.as_bytes()).is_none(),
                "{secret} exported"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_refresh_and_retry_shows_two_attempt_spans() {
    const NEW_KEY: &str = "nvapi-test-key-0002";
    let dir = tempfile::tempdir().unwrap();
    let (got, col) = collector(false).await;
    let (nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(5)).await;
    let cfg = write_config(dir.path(), nim_addr, &telemetry_table(col, ""));
    let p = spawn_serve(&cfg, None);
    wait_ready(p.admin).await;
    // The NIM now wants the new key, which is in the file but not loaded (60 s poll): the
    // first attempt gets 401, the on-demand refresh loads the new key, the retry gets 200.
    nim.set_keys(vec![NEW_KEY.into()]);
    std::fs::write(dir.path().join("key"), format!("{NEW_KEY}\n")).unwrap();
    let url = format!("http://{}/v1/chat/completions", p.gw);
    let (s, _) = send_json(post(&url, Some(CLIENT_KEY), &chat_body(false))).await;
    assert_eq!(s, 200);
    let spans = spans_until(&got, |s| {
        s.iter()
            .filter(|(_, x)| x.kind == SpanKind::Client as i32 && x.name == "POST")
            .count()
            >= 2
            && s.iter().any(|(_, x)| x.kind == SpanKind::Server as i32)
    })
    .await;
    let sv = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32 && s.parent_span_id == sv.span_id)
        .collect();
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    let codes: Vec<i64> = attempts
        .iter()
        .map(|s| int_attr(s, "http.response.status_code"))
        .collect();
    assert_eq!(codes, [401, 200]);
    assert_eq!(int_attr(sv, "http.response.status_code"), 200);
    // Each attempt reached the NIM as the parent of its own request.
    let tps: Vec<String> = nim
        .seen()
        .iter()
        .map(|x| x.headers["traceparent"].to_str().unwrap().to_string())
        .collect();
    for a in &attempts {
        assert!(
            tps.iter().any(|t| t.contains(&hex::encode(&a.span_id))),
            "{tps:?}"
        );
    }
    // The background key fetches are spans too.
    assert!(spans.iter().any(|s| s.name == "secret fetch"));
    for b in &got.lock().unwrap().raw {
        for secret in [NIM_KEY, NEW_KEY, CLIENT_KEY] {
            assert!(
                memchr::memmem::find(b, secret.as_bytes()).is_none(),
                "{secret} exported"
            );
        }
    }
}

async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (_, m) = get_admin(admin, "/metrics").await.unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Requests through a gateway whose collector is `col`: all answered 200, and the spans it
/// could not deliver counted.
async fn requests_unaffected_by(col: SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let (_nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(5)).await;
    let extra = "export_timeout = \"300ms\"\nmax_queue_size = 4\nmax_export_batch_size = 2\n";
    let cfg = write_config(dir.path(), nim_addr, &telemetry_table(col, extra));
    let p = spawn_serve(&cfg, None);
    wait_ready(p.admin).await;
    let url = format!("http://{}/v1/chat/completions", p.gw);
    for _ in 0..20 {
        let (s, v) = send_json(post(&url, Some(CLIENT_KEY), &chat_body(false))).await;
        assert_eq!(s, 200, "{v}");
    }
    let mut dropped = 0.0;
    for _ in 0..100 {
        dropped = metric(p.admin, "nimgate_trace_spans_dropped_total").await;
        if dropped > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped > 0.0, "no dropped spans counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_fails_no_request_and_drops_are_counted() {
    let (_keep, dead) = refused_addr();
    requests_unaffected_by(dead).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_collector_fails_no_request_and_drops_are_counted() {
    let (_got, col) = collector(true).await;
    requests_unaffected_by(col).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_telemetry_no_trace_work_and_the_client_traceparent_passes_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let (nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(5)).await;
    let p = spawn_serve(&write_config(dir.path(), nim_addr, ""), None);
    wait_ready(p.admin).await;
    let url = format!("http://{}/v1/chat/completions", p.gw);
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let mut req = post(&url, Some(CLIENT_KEY), &chat_body(false));
    req.headers_mut().insert("traceparent", tp.parse().unwrap());
    assert_eq!(send_json(req).await.0, 200);
    assert_eq!(nim.seen()[0].headers["traceparent"], tp.as_str());
    let audit = read_audit(&dir.path().join("audit.jsonl"));
    assert!(audit.iter().all(|r| r.get("trace_id").is_none()));
}

/// `sample_ratio = 0`: a request nimgate would start a trace for, and one whose client's trace is
/// not sampled, build no span (nothing exported, no upstream span: the NIM gets the client's
/// `traceparent`/`tracestate` exactly as sent, or none); a sampled parent is still followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_export_nothing_and_a_sampled_parent_is_followed() {
    const UNSAMPLED: &str = "0af7651916cd43dd8448eb211c80319c";
    let dir = tempfile::tempdir().unwrap();
    let (got, col) = collector(false).await;
    let (nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(5)).await;
    let cfg = write_config(
        dir.path(),
        nim_addr,
        &telemetry_table(col, "sample_ratio = 0.0\n"),
    );
    let p = spawn_serve(&cfg, None);
    wait_ready(p.admin).await;
    let url = format!("http://{}/v1/chat/completions", p.gw);
    // 1. No traceparent, ratio 0: no trace at all.
    assert_eq!(
        send_json(post(&url, Some(CLIENT_KEY), &chat_body(false)))
            .await
            .0,
        200
    );
    // 2. The client's trace is not sampled (flag 00).
    let unsampled_tp = format!("00-{UNSAMPLED}-{PARENT}-00");
    let mut req = post(&url, Some(CLIENT_KEY), &chat_body(false));
    req.headers_mut()
        .insert("traceparent", unsampled_tp.parse().unwrap());
    req.headers_mut()
        .insert("tracestate", "vendor=opaque".parse().unwrap());
    assert_eq!(send_json(req).await.0, 200);
    // 3. A sampled parent (flag 01) is followed whatever the ratio.
    let mut req = post(&url, Some(CLIENT_KEY), &chat_body(false));
    req.headers_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
    );
    assert_eq!(send_json(req).await.0, 200);

    let spans = spans_until(&got, |s| {
        s.iter().any(|(_, x)| x.kind == SpanKind::Server as i32)
            && s.iter().any(|(_, x)| x.kind == SpanKind::Client as i32)
    })
    .await;
    // Spans of requests 1 and 2 would have ended before those of request 3: give one more
    // export round for any that were still queued.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let all: Vec<Span> = got
        .lock()
        .unwrap()
        .spans
        .iter()
        .map(|(_, s)| s.clone())
        .collect();
    let trace = hex::decode(TRACE).unwrap();
    assert!(
        all.iter().all(|s| s.trace_id == trace),
        "only the sampled request's spans are exported: {:?}",
        all.iter()
            .map(|s| (&s.name, hex::encode(&s.trace_id)))
            .collect::<Vec<_>>()
    );
    let sv = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(sv.parent_span_id, hex::decode(PARENT).unwrap());
    let cl = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .unwrap();

    let seen = nim.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen[0].headers.get("traceparent").is_none(),
        "no trace started: {:?}",
        seen[0].headers.get("traceparent")
    );
    assert_eq!(seen[1].headers["traceparent"], unsampled_tp.as_str());
    assert_eq!(seen[1].headers["tracestate"], "vendor=opaque");
    assert_eq!(
        seen[2].headers["traceparent"],
        format!("00-{TRACE}-{}-01", hex::encode(&cl.span_id)).as_str()
    );
    // The audit records: no trace id for the trace never started, the client's for the rest.
    let audit = read_audit(&dir.path().join("audit.jsonl"));
    let uses: Vec<&serde_json::Value> = audit.iter().filter(|r| r["event"] == "use").collect();
    assert_eq!(uses.len(), 3);
    assert!(uses[0].get("trace_id").is_none(), "{}", uses[0]);
    assert_eq!(uses[1]["trace_id"], UNSAMPLED);
    assert_eq!(uses[2]["trace_id"], TRACE);
}

#[test]
fn grpc_and_bad_telemetry_settings_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (table, field) in [
        (
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4317\"\notlp_protocol = \"grpc\"\n",
            "telemetry.otlp_protocol",
        ),
        (
            "[telemetry]\notlp_endpoint = \"ftp://x\"\n",
            "telemetry.otlp_endpoint",
        ),
        (
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 2.0\n",
            "telemetry.sample_ratio",
        ),
    ] {
        let cfg = write_config(dir.path(), "127.0.0.1:9".parse().unwrap(), table);
        let out = run_bin(&["check", "--config"], &[&cfg]);
        assert_eq!(out.status.code(), Some(64), "{table}");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(field), "{table}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_queued_are_flushed_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (got, col) = collector(false).await;
    let (_nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(5)).await;
    // Exports would wait a minute: only the shutdown flush can deliver the request's spans.
    let table =
        format!("[telemetry]\notlp_endpoint = \"http://{col}\"\nexport_interval = \"60s\"\n");
    let mut p = spawn_serve(&write_config(dir.path(), nim_addr, &table), None);
    wait_ready(p.admin).await;
    let url = format!("http://{}/v1/chat/completions", p.gw);
    assert_eq!(
        send_json(post(&url, Some(CLIENT_KEY), &chat_body(false)))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !got.lock()
            .unwrap()
            .spans
            .iter()
            .any(|(_, s)| s.kind == SpanKind::Server as i32),
        "exported before shutdown: the test would not show the flush"
    );
    kill_pid(p.child.id(), "-TERM");
    let (status, _, err) = tokio::task::spawn_blocking(move || p.finish())
        .await
        .unwrap();
    assert!(status.success(), "{err}");
    let r = got.lock().unwrap();
    assert!(
        r.spans
            .iter()
            .any(|(_, s)| s.kind == SpanKind::Server as i32 && s.name == format!("chat {MODEL}")),
        "no server span after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_inside_a_request_carry_its_trace_and_span_ids() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let (got, col) = collector(false).await;
    let (nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(5)).await;
    let cfg = write_config(dir.path(), nim_addr, &telemetry_table(col, ""));
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NIMGATE_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let serving = rx
        .iter()
        .find(|v| v["fields"]["message"] == "nimgate serving")
        .unwrap();
    let addr = |k: &str| -> SocketAddr { serving["fields"][k].as_str().unwrap().parse().unwrap() };
    wait_ready(addr("admin")).await;
    // A rejected key logs a warning inside the request.
    nim.set_keys(vec!["nvapi-test-key-0002".into()]);
    std::fs::write(dir.path().join("key"), "nvapi-test-key-0002\n").unwrap();
    let url = format!("http://{}/v1/chat/completions", addr("listen"));
    let mut req = post(&url, Some(CLIENT_KEY), &chat_body(false));
    req.headers_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
    );
    assert_eq!(send_json(req).await.0, 200);
    let warn = rx
        .iter()
        .find(|v| v["fields"]["message"] == "upstream rejected the key; refreshing")
        .unwrap();
    kill_pid(child.id(), "-TERM");
    let _ = child.wait();
    assert_eq!(warn["span"]["trace_id"], TRACE, "{warn}");
    let spans = spans_until(&got, |s| {
        s.iter().any(|(_, x)| x.kind == SpanKind::Server as i32)
    })
    .await;
    let sv = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(warn["span"]["span_id"], hex::encode(&sv.span_id), "{warn}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_login_and_key_fetches_are_spans_without_credentials() {
    use common::fake_vault::FakeVault;
    let dir = tempfile::tempdir().unwrap();
    let (got, col) = collector(false).await;
    let (_nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(5)).await;
    let fv = FakeVault::start().await;
    fv.put_kv2(
        "secret",
        "nim/prod",
        serde_json::json!({"api_key": NIM_KEY}),
    );
    fv.add_approle(
        "approle",
        "role-1",
        "secret-id-1",
        Duration::from_secs(60),
        Duration::from_secs(600),
        true,
    );
    std::fs::write(dir.path().join("role-id"), "role-1\n").unwrap();
    std::fs::write(dir.path().join("secret-id"), "secret-id-1\n").unwrap();
    let cfg = dir.path().join("nimgate.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstream]
url = "http://{nim_addr}"
[secret]
source = "vault"
address = "{url}"
path = "nim/prod"
field = "api_key"
refresh = "200ms"
[secret.auth]
method = "approle"
role_id_file = "{d}/role-id"
secret_id_file = "{d}/secret-id"
[[clients]]
id = "team-a"
key_sha256 = "{a}"
[audit]
path = "{d}/audit.jsonl"
{t}
"#,
            url = fv.url(),
            d = dir.path().display(),
            a = key_digest_hex(CLIENT_KEY),
            t = telemetry_table(col, ""),
        ),
    )
    .unwrap();
    let p = spawn_serve(&cfg, None);
    wait_ready(p.admin).await;
    let spans = spans_until(&got, |s| {
        s.iter().any(|(_, x)| x.name == "vault login")
            && s.iter().filter(|(_, x)| x.name == "secret fetch").count() >= 2
    })
    .await;
    let login = spans.iter().find(|s| s.name == "vault login").unwrap();
    assert_eq!(str_attr(login, "nimgate.secret_source"), "vault");
    assert!(attr(login, "error.type").is_none());
    let fetch = spans.iter().find(|s| s.name == "secret fetch").unwrap();
    assert_eq!(
        login.trace_id, fetch.trace_id,
        "the login ran inside the first fetch"
    );
    let mut secrets = vec![NIM_KEY.to_string(), "secret-id-1".into()];
    secrets.extend(fv.tokens_issued());
    for b in &got.lock().unwrap().raw {
        for s in &secrets {
            assert!(
                memchr::memmem::find(b, s.as_bytes()).is_none(),
                "a credential was exported"
            );
        }
    }
}
