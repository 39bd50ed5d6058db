//! Prometheus metrics from plain atomics: no lock and no allocation on the request path. The
//! `reason`/`kind` labels are `GatewayError::code()` for every variant of `GatewayError::ALL`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::audit::Audit;
use crate::error::GatewayError;
use crate::secret::SecretStore;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
];
const N: usize = GatewayError::ALL.len();

/// HELP text of the request duration histogram (pinned by a test against what `response` measures).
pub const DURATION_HELP: &str =
    "Time from the request's arrival to the end of its response (last body byte, or the error).";

#[derive(Default)]
pub struct Metrics {
    responses: [AtomicU64; 6],
    denied: [AtomicU64; N],
    upstream_errors: [AtomicU64; N],
    duration_buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_us: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    key_redactions: AtomicU64,
}

/// `# HELP` and `# TYPE` lines of one family.
fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

impl Metrics {
    /// A response is finished (its last byte sent, or an error answered) after `took`.
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

    pub fn denied(&self, e: GatewayError) {
        self.denied[e.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_error(&self, e: GatewayError) {
        self.upstream_errors[e.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Occurrences of the injected key removed from NIM responses (headers, bodies, `Location`).
    pub fn key_redactions(&self, n: u64) {
        if n > 0 {
            self.key_redactions.fetch_add(n, Ordering::Relaxed);
        }
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
        family(
            &mut o,
            "nimgate_responses_total",
            "counter",
            "Responses sent to clients, by status class.",
        );
        for (i, c) in self.responses.iter().enumerate().skip(1) {
            let _ = writeln!(o, "nimgate_responses_total{{class=\"{i}xx\"}} {}", g(c));
        }
        family(
            &mut o,
            "nimgate_denied_total",
            "counter",
            "Requests refused before the key was used, by reason.",
        );
        for (e, c) in GatewayError::ALL.iter().zip(&self.denied) {
            let _ = writeln!(
                o,
                "nimgate_denied_total{{reason=\"{}\"}} {}",
                e.code(),
                g(c)
            );
        }
        family(
            &mut o,
            "nimgate_upstream_errors_total",
            "counter",
            "Upstream failures after the key was sent, by kind.",
        );
        for (e, c) in GatewayError::ALL.iter().zip(&self.upstream_errors) {
            if e.is_upstream() {
                let _ = writeln!(
                    o,
                    "nimgate_upstream_errors_total{{kind=\"{}\"}} {}",
                    e.code(),
                    g(c)
                );
            }
        }
        family(
            &mut o,
            "nimgate_request_duration_seconds",
            "histogram",
            DURATION_HELP,
        );
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
        family(
            &mut o,
            "nimgate_tokens_total",
            "counter",
            "Tokens the NIM reported in responses' usage, by kind.",
        );
        let _ = writeln!(o, "nimgate_tokens_total{{kind=\"prompt\"}} {}\nnimgate_tokens_total{{kind=\"completion\"}} {}", g(&self.prompt_tokens), g(&self.completion_tokens));
        family(
            &mut o,
            "nimgate_key_redactions_total",
            "counter",
            "Occurrences of the injected NIM key removed from upstream responses (headers, bodies, Location).",
        );
        let _ = writeln!(
            o,
            "nimgate_key_redactions_total {}",
            g(&self.key_redactions)
        );

        family(
            &mut o,
            "nimgate_key_loaded",
            "gauge",
            "1 if a NIM key is loaded and fresh.",
        );
        let _ = writeln!(o, "nimgate_key_loaded {}", u8::from(store.ready().is_ok()));
        if let Some(k) = &store.peek() {
            family(
                &mut o,
                "nimgate_key_age_seconds",
                "gauge",
                "Time since the current key was loaded.",
            );
            let _ = writeln!(
                o,
                "nimgate_key_age_seconds {:.3}",
                k.loaded_at.elapsed().as_secs_f64()
            );
            family(
                &mut o,
                "nimgate_key_generation",
                "gauge",
                "Keys loaded since start (each rotation adds one).",
            );
            let _ = writeln!(o, "nimgate_key_generation {}", k.generation);
        }
        if let Some(s) = store.since_success() {
            family(
                &mut o,
                "nimgate_secret_last_success_age_seconds",
                "gauge",
                "Time since the last successful secret fetch.",
            );
            let _ = writeln!(
                o,
                "nimgate_secret_last_success_age_seconds {:.3}",
                s.as_secs_f64()
            );
        }
        family(
            &mut o,
            "nimgate_secret_consecutive_failures",
            "gauge",
            "Secret fetches failed in a row (0 after a success).",
        );
        let _ = writeln!(
            o,
            "nimgate_secret_consecutive_failures {}",
            store.consecutive_failures()
        );
        let (records, errors) = audit.counters();
        let (thread_batches, inline_batches) = audit.batches();
        family(
            &mut o,
            "nimgate_audit_batches_total",
            "counter",
            "Audit batches written, by the thread that wrote them.",
        );
        let _ = writeln!(o, "nimgate_audit_batches_total{{by=\"writer_thread\"}} {thread_batches}\nnimgate_audit_batches_total{{by=\"runtime_thread\"}} {inline_batches}");
        family(
            &mut o,
            "nimgate_audit_records_total",
            "counter",
            "Audit records written.",
        );
        let _ = writeln!(o, "nimgate_audit_records_total {records}");
        family(
            &mut o,
            "nimgate_audit_write_errors_total",
            "counter",
            "Failed audit writes and syncs.",
        );
        let _ = writeln!(o, "nimgate_audit_write_errors_total {errors}");
        family(
            &mut o,
            "nimgate_audit_healthy",
            "gauge",
            "1 if the last audit write succeeded.",
        );
        let _ = writeln!(o, "nimgate_audit_healthy {}", u8::from(audit.healthy()));
        o
    }
}

/// Routing metrics, by upstream (its configured name; never a URL or a key): ejections,
/// failed health checks, attempts moved to another replica, replicas in rotation.
pub fn render_routes(routes: &crate::proxy::Routes) -> String {
    let mut o = String::new();
    let now = crate::proxy::replica::now_ms();
    type Get = fn(&crate::proxy::Upstream) -> u64;
    let counters: [(&str, &str, Get); 3] = [
        (
            "nimgate_upstream_ejections_total",
            "Replicas ejected after consecutive connect failures or 5xx answers.",
            |u| u.stats.ejections.load(Ordering::Relaxed),
        ),
        (
            "nimgate_upstream_health_check_failures_total",
            "Active health checks (GET /v1/health/ready) that failed.",
            |u| u.stats.health_check_failures.load(Ordering::Relaxed),
        ),
        (
            "nimgate_upstream_retries_total",
            "Requests moved to another replica after a connect failure (nothing was sent).",
            |u| u.stats.retries.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in counters {
        family(&mut o, name, "counter", help);
        for u in routes.all() {
            let _ = writeln!(o, "{name}{{upstream=\"{}\"}} {}", u.name, get(u));
        }
    }
    family(
        &mut o,
        "nimgate_upstream_replicas_up",
        "gauge",
        "Replicas taking requests (not ejected, not failing their health check).",
    );
    for u in routes.all() {
        let up = u.replicas.iter().filter(|r| r.is_up(now)).count();
        let _ = writeln!(
            o,
            "nimgate_upstream_replicas_up{{upstream=\"{}\"}} {up}",
            u.name
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn every_family_has_help_and_type_and_every_error_a_label() {
        let store = SecretStore::new("Bearer {key}", None);
        let m = Metrics::default();
        for e in GatewayError::ALL {
            m.denied(e);
        }
        m.response(200, Duration::from_millis(3));
        let text = m.render(&store, &Audit::off());
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
        assert!(text.contains("nimgate_request_duration_seconds_bucket{le=\"0.005\"} 1"));
    }
}
