//! Prometheus metrics from plain atomics: no lock and no allocation on the request path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::audit::Audit;
use crate::secret::SecretStore;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
];
const REASONS: [&str; 14] = [
    "invalid_api_key",
    "not_found",
    "method_not_allowed",
    "request_too_large",
    "bad_request",
    "request_timeout",
    "rate_limit_exceeded",
    "overloaded",
    "credential_unavailable",
    "audit_unavailable",
    "upstream_unreachable",
    "upstream_timeout",
    "shutting_down",
    "other",
];

#[derive(Default)]
pub struct Metrics {
    responses: [AtomicU64; 6],
    denied: [AtomicU64; REASONS.len()],
    upstream_errors: [AtomicU64; REASONS.len()],
    duration_buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_us: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

fn reason_index(code: &str) -> usize {
    REASONS
        .iter()
        .position(|r| *r == code)
        .unwrap_or(REASONS.len() - 1)
}

impl Metrics {
    pub fn response(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).min(5);
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.duration_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn denied(&self, code: &str) {
        self.denied[reason_index(code)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_error(&self, code: &str) {
        self.upstream_errors[reason_index(code)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn tokens(&self, prompt: u64, completion: u64) {
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, store: &SecretStore, audit: &Audit) -> String {
        let mut o = String::with_capacity(4096);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        o.push_str("# HELP nimgate_responses_total Responses sent to clients, by status class.\n# TYPE nimgate_responses_total counter\n");
        for (i, c) in self.responses.iter().enumerate().skip(1) {
            let _ = writeln!(o, "nimgate_responses_total{{class=\"{i}xx\"}} {}", g(c));
        }
        o.push_str("# HELP nimgate_denied_total Requests refused before the key was used, by reason.\n# TYPE nimgate_denied_total counter\n");
        for (r, c) in REASONS.iter().zip(&self.denied) {
            let _ = writeln!(o, "nimgate_denied_total{{reason=\"{r}\"}} {}", g(c));
        }
        o.push_str("# HELP nimgate_upstream_errors_total Upstream failures, by kind.\n# TYPE nimgate_upstream_errors_total counter\n");
        for (r, c) in REASONS.iter().zip(&self.upstream_errors) {
            if r.starts_with("upstream") || *r == "request_too_large" {
                let _ = writeln!(o, "nimgate_upstream_errors_total{{kind=\"{r}\"}} {}", g(c));
            }
        }
        o.push_str("# HELP nimgate_request_duration_seconds Time from request to end of response headers or error.\n# TYPE nimgate_request_duration_seconds histogram\n");
        let mut cum = 0;
        for (b, c) in BUCKETS.iter().zip(&self.duration_buckets) {
            cum += g(c);
            let _ = writeln!(
                o,
                "nimgate_request_duration_seconds_bucket{{le=\"{b}\"}} {cum}"
            );
        }
        let count = g(&self.duration_count);
        let _ = writeln!(
            o,
            "nimgate_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "nimgate_request_duration_seconds_sum {}",
            g(&self.duration_sum_us) as f64 / 1e6
        );
        let _ = writeln!(o, "nimgate_request_duration_seconds_count {count}");
        let _ = writeln!(o, "# TYPE nimgate_tokens_total counter\nnimgate_tokens_total{{kind=\"prompt\"}} {}\nnimgate_tokens_total{{kind=\"completion\"}} {}", g(&self.prompt_tokens), g(&self.completion_tokens));

        let key = store.peek();
        let _ = writeln!(o, "# HELP nimgate_key_loaded 1 if a NIM key is loaded and fresh.\n# TYPE nimgate_key_loaded gauge\nnimgate_key_loaded {}", u8::from(store.ready().is_ok()));
        if let Some(k) = &key {
            let _ = writeln!(o, "# HELP nimgate_key_age_seconds Time since the current key was loaded.\n# TYPE nimgate_key_age_seconds gauge\nnimgate_key_age_seconds {:.3}", k.loaded_at.elapsed().as_secs_f64());
            let _ = writeln!(
                o,
                "# TYPE nimgate_key_generation gauge\nnimgate_key_generation {}",
                k.generation
            );
        }
        if let Some(s) = store.since_success() {
            let _ = writeln!(o, "# HELP nimgate_secret_last_success_age_seconds Time since the last successful secret fetch.\n# TYPE nimgate_secret_last_success_age_seconds gauge\nnimgate_secret_last_success_age_seconds {:.3}", s.as_secs_f64());
        }
        let _ = writeln!(o, "# TYPE nimgate_secret_consecutive_failures gauge\nnimgate_secret_consecutive_failures {}", store.consecutive_failures());
        let (records, errors) = audit.counters();
        let (thread_batches, inline_batches) = audit.batches();
        let _ = writeln!(o, "# TYPE nimgate_audit_batches_total counter\nnimgate_audit_batches_total{{by=\"writer_thread\"}} {thread_batches}\nnimgate_audit_batches_total{{by=\"runtime_thread\"}} {inline_batches}");
        let _ = writeln!(o, "# TYPE nimgate_audit_records_total counter\nnimgate_audit_records_total {records}\n# TYPE nimgate_audit_write_errors_total counter\nnimgate_audit_write_errors_total {errors}\n# TYPE nimgate_audit_healthy gauge\nnimgate_audit_healthy {}", u8::from(audit.healthy()));
        o
    }
}
