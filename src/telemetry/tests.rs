//! Unit tests of the exposition: every family has HELP and TYPE, every error a label, and the
//! labelled families count into the right slots.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::audit::{Audit, Usage};
use crate::error::GatewayError;
use crate::secret::SecretStore;

fn render(m: &Metrics) -> String {
    let store = SecretStore::new("Bearer {key}", None);
    m.render(&[("default", &store)], &Audit::off())
}

#[test]
fn every_family_has_help_and_type_and_every_error_a_label() {
    let m = Metrics::default();
    for e in GatewayError::ALL {
        m.denied(m.unauthenticated(), e);
    }
    let l = ReqLabels {
        client: m.unauthenticated(),
        op: Op::Chat,
    };
    m.response(l, Some("default"), 200, Duration::from_millis(3));
    let text = render(&m);
    let mut help = BTreeSet::new();
    let mut types = BTreeMap::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        let mut w = line.split(' ');
        match (w.next(), w.next(), w.next()) {
            (Some("#"), Some("HELP"), Some(n)) => assert!(help.insert(n.to_string()), "{n}"),
            (Some("#"), Some("TYPE"), Some(n)) => {
                types.insert(n.to_string(), w.next().unwrap_or("").to_string());
            }
            (Some(s), Some(_), None) => {
                let name = s.split('{').next().unwrap_or(s);
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suf| {
                        name.strip_suffix(suf)
                            .filter(|b| types.get(*b).is_some_and(|t| t == "histogram"))
                    })
                    .unwrap_or(name);
                samples.insert(base.to_string());
            }
            _ => panic!("unexpected line {line:?}"),
        }
    }
    for s in &samples {
        assert!(
            help.contains(s) && types.contains_key(s),
            "{s} lacks HELP or TYPE"
        );
    }
    for e in GatewayError::ALL {
        assert!(
            text.contains(&format!(
                "nimgate_denied_total{{reason=\"{}\"}} 1",
                e.code()
            )),
            "{e:?}"
        );
    }
    assert!(text.contains(&format!(
        "# HELP nimgate_request_duration_seconds {DURATION_HELP}"
    )));
    assert!(
        text.contains("nimgate_request_duration_seconds_bucket{operation=\"chat\",le=\"0.005\"} 1")
    );
    // No configured client: only the `unauthenticated` slot has counts.
    assert!(text.contains("nimgate_requests_total{client=\"unauthenticated\",operation=\"chat\",upstream=\"default\",status_class=\"2xx\"} 1"), "{text}");
    assert!(text.contains(
        "nimgate_limit_rejections_total{client=\"unauthenticated\",reason=\"concurrency_limit_exceeded\"} 1"
    ));
}

#[test]
fn tokens_bytes_and_ttft_land_in_client_and_model_slots() {
    let clients: Vec<Arc<str>> = vec!["team-a".into(), "team\"b".into()];
    let m = Metrics::new(&clients, &["default".into()], &["meta/llama"]);
    let f = |client, model, usage, first_token| Finished {
        labels: ReqLabels {
            client,
            op: Op::Chat,
        },
        upstream: "default",
        status: 200,
        took: Duration::from_millis(20),
        model,
        usage,
        bytes_in: 10,
        bytes_out: 100,
        first_token,
    };
    let u = Usage {
        prompt_tokens: 7,
        completion_tokens: 5,
        total_tokens: 12,
    };
    m.finished(&f(0, Some("meta/llama"), Some(u), None));
    m.finished(&f(
        1,
        Some("other/model"),
        Some(u),
        Some(Duration::from_millis(2)),
    ));
    // No usage and no stream: the model (a client's choice) takes no slot.
    m.finished(&f(1, Some("junk"), None, None));
    let text = render(&m);
    for want in [
        "nimgate_tokens_total{client=\"team-a\",model=\"meta/llama\",kind=\"prompt\"} 7",
        "nimgate_tokens_total{client=\"team\\\"b\",model=\"other/model\",kind=\"completion\"} 5",
        "gen_ai_client_token_usage_bucket{gen_ai_token_type=\"input\",gen_ai_request_model=\"meta/llama\",le=\"16\"} 1",
        "gen_ai_client_token_usage_sum{gen_ai_token_type=\"output\",gen_ai_request_model=\"other/model\"} 5",
        "nimgate_stream_time_to_first_token_seconds_count{model=\"other/model\"} 1",
        "nimgate_request_bytes_total{client=\"team-a\"} 10",
        "nimgate_response_bytes_total{client=\"team\\\"b\"} 200",
        "nimgate_requests_total{client=\"team\\\"b\",operation=\"chat\",upstream=\"default\",status_class=\"2xx\"} 2",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    assert!(!text.contains("junk"));
}

#[test]
fn gauges_follow_their_guards() {
    let m = Arc::new(Metrics::default());
    let a = m.in_flight();
    let s = m.open_stream();
    assert!(render(&m).contains("nimgate_requests_in_flight 1\n"));
    assert!(render(&m).contains("nimgate_sse_streams_open 1\n"));
    drop((a, s));
    assert!(render(&m).contains("nimgate_requests_in_flight 0\n"));
    assert!(render(&m).contains("nimgate_sse_streams_open 0\n"));
}

#[test]
fn root_sampling_passes_its_ratio_of_draws_and_never_or_always_at_the_ends() {
    use super::otel::{draw, threshold, GOLDEN};
    let n = 100_000u64;
    let passed = |ratio: f64| {
        let t = threshold(ratio);
        (1..=n).filter(|i| draw(i.wrapping_mul(GOLDEN)) < t).count() as u64
    };
    assert_eq!(passed(0.0), 0);
    assert_eq!(passed(1.0), n);
    for r in [0.01, 0.25, 0.5] {
        let p = passed(r) as f64 / n as f64;
        assert!((p - r).abs() < 0.2 * r + 0.002, "ratio {r}: {p} passed");
    }
}
