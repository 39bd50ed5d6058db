//! The Prometheus text exposition (format 0.0.4) of `Metrics`, the secret sources and the audit
//! trail, rendered per scrape on the admin listener. Every family gets `# HELP` and `# TYPE`;
//! multi-label request families list only the label combinations that occurred (a client ×
//! operation × upstream × class product would otherwise be mostly zeros).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::labels::{escape, Op};
use super::metrics::{Metrics, CLASSES, DURATION_HELP, REJECTIONS};
use crate::audit::Audit;
use crate::error::GatewayError;
use crate::hist::{Histogram, SECONDS};
use crate::secret::{SecretOp, SecretStore};

/// Slots with escaped label values.
fn labelled(v: &[(usize, std::sync::Arc<str>)]) -> Vec<(usize, String)> {
    v.iter()
        .map(|(i, n)| (*i, escape(n).into_owned()))
        .collect()
}

/// `# HELP` and `# TYPE` lines of one family.
pub(super) fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn g(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Metrics {
    /// The client slots in use, with their (escaped) label values.
    fn client_labels(&self) -> Vec<(usize, String)> {
        labelled(&self.clients.labelled("unauthenticated"))
    }

    fn upstream_labels(&self) -> Vec<(usize, String)> {
        labelled(&self.upstreams.labelled("none"))
    }

    /// The whole exposition: request families, then each `(upstream, store)` secret source,
    /// then the audit trail.
    pub fn render(&self, sources: &[(&str, &SecretStore)], audit: &Audit) -> String {
        let mut o = String::with_capacity(16384);
        self.render_requests(&mut o);
        self.render_models(&mut o);
        render_sources(&mut o, sources);
        render_audit(&mut o, audit);
        o
    }

    fn render_requests(&self, o: &mut String) {
        family(o, "nimgate_requests_total", "counter",
            "Requests answered, by client, GenAI operation, upstream (none: refused before routing) and status class.");
        let (clients, ups) = (self.client_labels(), self.upstream_labels());
        for (c, client) in &clients {
            for op in Op::ALL {
                for (u, upstream) in &ups {
                    for class in 0..CLASSES {
                        let n = g(&self.requests[self.request_index(*c, op.index(), *u, class)]);
                        if n > 0 {
                            let _ = writeln!(o, "nimgate_requests_total{{client=\"{client}\",operation=\"{}\",upstream=\"{upstream}\",status_class=\"{}xx\"}} {n}",
                                op.as_str(), class + 1);
                        }
                    }
                }
            }
        }
        family(
            o,
            "nimgate_responses_total",
            "counter",
            "Responses sent to clients, by status class.",
        );
        for (i, c) in self.responses.iter().enumerate().skip(1) {
            let _ = writeln!(o, "nimgate_responses_total{{class=\"{i}xx\"}} {}", g(c));
        }
        family(
            o,
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
            o,
            "nimgate_limit_rejections_total",
            "counter",
            "Requests refused by a rate or concurrency limit, by client and reason.",
        );
        for (c, client) in &clients {
            for (k, e) in REJECTIONS.iter().enumerate() {
                let n = g(&self.rejections[c * REJECTIONS.len() + k]);
                if n > 0 {
                    let _ = writeln!(
                        o,
                        "nimgate_limit_rejections_total{{client=\"{client}\",reason=\"{}\"}} {n}",
                        e.code()
                    );
                }
            }
        }
        family(
            o,
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
            o,
            "nimgate_request_duration_seconds",
            "histogram",
            DURATION_HELP,
        );
        for op in Op::ALL {
            let l = format!("operation=\"{}\",", op.as_str());
            self.duration[op.index()].render(o, "nimgate_request_duration_seconds", &l);
        }
        family(o, "nimgate_upstream_time_to_first_byte_seconds", "histogram",
            "Time from sending a request upstream to the arrival of the upstream's response head, by upstream.");
        for (u, name) in &ups {
            if *u < self.upstreams.other() || self.ttfb[*u].count() > 0 {
                let l = format!("upstream=\"{name}\",");
                self.ttfb[*u].render(o, "nimgate_upstream_time_to_first_byte_seconds", &l);
            }
        }
        for (name, help, per) in [
            (
                "nimgate_request_bytes_total",
                "Request body bytes read from clients, by client.",
                &self.bytes_in,
            ),
            (
                "nimgate_response_bytes_total",
                "Response body bytes sent to clients, by client.",
                &self.bytes_out,
            ),
        ] {
            family(o, name, "counter", help);
            for (c, client) in &clients {
                let n = g(&per[*c]);
                if n > 0 {
                    let _ = writeln!(o, "{name}{{client=\"{client}\"}} {n}");
                }
            }
        }
        family(
            o,
            "nimgate_requests_in_flight",
            "gauge",
            "Requests holding a concurrency slot (admitted, response not yet finished).",
        );
        let _ = writeln!(
            o,
            "nimgate_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        family(
            o,
            "nimgate_sse_streams_open",
            "gauge",
            "Server-sent-event responses being streamed to clients.",
        );
        let _ = writeln!(
            o,
            "nimgate_sse_streams_open {}",
            self.open_streams.load(Ordering::Relaxed)
        );
        family(o, "nimgate_key_redactions_total", "counter",
            "Occurrences of the injected NIM key removed from upstream responses (headers, bodies, Location).");
        let _ = writeln!(
            o,
            "nimgate_key_redactions_total {}",
            g(&self.key_redactions)
        );
        family(
            o,
            "nimgate_config_reloads_total",
            "counter",
            "Config reload attempts (SIGHUP or a changed file), by outcome.",
        );
        for (outcome, n) in super::metrics::RELOAD_OUTCOMES.iter().zip(&self.reloads) {
            let _ = writeln!(
                o,
                "nimgate_config_reloads_total{{outcome=\"{outcome}\"}} {}",
                g(n)
            );
        }
        family(
            o,
            "nimgate_config_last_reload_timestamp_seconds",
            "gauge",
            "Unix time of the last applied config reload (0: none since start).",
        );
        let _ = writeln!(
            o,
            "nimgate_config_last_reload_timestamp_seconds {}",
            g(&self.last_reload)
        );
        family(
            o,
            "nimgate_trace_spans_dropped_total",
            "counter",
            "Spans the trace exporter dropped (queue full, or the collector failed or timed out).",
        );
        let _ = writeln!(
            o,
            "nimgate_trace_spans_dropped_total {}",
            super::otel::dropped()
        );
    }

    fn render_models(&self, o: &mut String) {
        let models = self.models.names();
        family(o, "gen_ai_client_token_usage", "histogram",
            "Tokens per response as the NIM reported them in usage, by token type and requested model (OpenTelemetry GenAI gen_ai.client.token.usage).");
        for (m, name) in &models {
            for (k, kind) in ["input", "output"].iter().enumerate() {
                let h = &self.token_usage[m * 2 + k];
                if h.count() > 0 {
                    let l = format!(
                        "gen_ai_token_type=\"{kind}\",gen_ai_request_model=\"{}\",",
                        escape(name)
                    );
                    h.render(o, "gen_ai_client_token_usage", &l);
                }
            }
        }
        family(
            o,
            "nimgate_tokens_total",
            "counter",
            "Tokens the NIM reported in responses' usage, by client, model and kind.",
        );
        for (c, client) in self.client_labels() {
            for (m, name) in &models {
                for (k, kind) in ["prompt", "completion"].iter().enumerate() {
                    let n = g(&self.tokens[(c * super::labels::MODEL_SLOTS + m) * 2 + k]);
                    if n > 0 {
                        let _ = writeln!(o, "nimgate_tokens_total{{client=\"{client}\",model=\"{}\",kind=\"{kind}\"}} {n}", escape(name));
                    }
                }
            }
        }
        family(o, "nimgate_stream_time_to_first_token_seconds", "histogram",
            "Time from a streamed (SSE) request's arrival to its first response body byte, by requested model.");
        for (m, name) in &models {
            if self.ttft[*m].count() > 0 {
                let l = format!("model=\"{}\",", escape(name));
                self.ttft[*m].render(o, "nimgate_stream_time_to_first_token_seconds", &l);
            }
        }
    }
}

/// The per-upstream gauges of each secret source (`value` `None`: no sample, e.g. no key yet).
type SourceGauge = (&'static str, &'static str, fn(&SecretStore) -> Option<f64>);
const SOURCE_GAUGES: [SourceGauge; 5] = [
    (
        "nimgate_key_loaded",
        "1 if the upstream's NIM key is loaded and fresh.",
        |s| Some(f64::from(u8::from(s.ready().is_ok()))),
    ),
    (
        "nimgate_key_age_seconds",
        "Time since the upstream's current key was loaded.",
        |s| s.peek().map(|k| k.loaded_at.elapsed().as_secs_f64()),
    ),
    (
        "nimgate_key_generation",
        "Keys the upstream's store loaded since start (each rotation adds one).",
        |s| s.peek().map(|k| k.generation as f64),
    ),
    (
        "nimgate_secret_last_success_age_seconds",
        "Time since the upstream's secret source last fetched successfully.",
        |s| s.since_success().map(|d| d.as_secs_f64()),
    ),
    (
        "nimgate_secret_consecutive_failures",
        "Secret fetches failed in a row (0 after a success).",
        |s| Some(f64::from(s.consecutive_failures())),
    ),
];

fn render_sources(o: &mut String, sources: &[(&str, &SecretStore)]) {
    for (name, help, value) in SOURCE_GAUGES {
        family(o, name, "gauge", help);
        for (u, s) in sources {
            if let Some(v) = value(s) {
                let _ = writeln!(o, "{name}{{upstream=\"{}\"}} {v}", escape(u));
            }
        }
    }
    family(o, "nimgate_secret_failures_total", "counter",
        "Failed secret-source operations, by upstream and operation (fetch of the key, Vault token renewal, Vault login).");
    for (u, s) in sources {
        for op in SecretOp::ALL {
            let _ = writeln!(
                o,
                "nimgate_secret_failures_total{{upstream=\"{}\",op=\"{}\"}} {}",
                escape(u),
                op.as_str(),
                s.failures(op)
            );
        }
    }
}

fn render_audit(o: &mut String, audit: &Audit) {
    let (records, errors) = audit.counters();
    let (thread_batches, inline_batches) = audit.batches();
    family(
        o,
        "nimgate_audit_batches_total",
        "counter",
        "Audit batches written, by the thread that wrote them.",
    );
    let _ = writeln!(o, "nimgate_audit_batches_total{{by=\"writer_thread\"}} {thread_batches}\nnimgate_audit_batches_total{{by=\"runtime_thread\"}} {inline_batches}");
    family(
        o,
        "nimgate_audit_records_total",
        "counter",
        "Audit records written.",
    );
    let _ = writeln!(o, "nimgate_audit_records_total {records}");
    family(
        o,
        "nimgate_audit_write_errors_total",
        "counter",
        "Failed audit writes and syncs.",
    );
    let _ = writeln!(o, "nimgate_audit_write_errors_total {errors}");
    family(
        o,
        "nimgate_audit_healthy",
        "gauge",
        "1 if the last audit write succeeded.",
    );
    let _ = writeln!(o, "nimgate_audit_healthy {}", u8::from(audit.healthy()));
    family(
        o,
        "nimgate_audit_queue_depth",
        "gauge",
        "Audit records queued and not yet written (holding queue room).",
    );
    let _ = writeln!(o, "nimgate_audit_queue_depth {}", audit.queue_depth());
    family(
        o,
        "nimgate_audit_write_duration_seconds",
        "histogram",
        "Time of one audit batch write (with its sync under fsync = \"batch\").",
    );
    match audit.write_latency() {
        Some(h) => h.render(o, "nimgate_audit_write_duration_seconds", ""),
        None => Histogram::new(SECONDS).render(o, "nimgate_audit_write_duration_seconds", ""),
    }
    // Chain-head anchoring, only when `audit.anchor` is set.
    if let Some(a) = audit
        .anchor_stats()
        .filter(|a| a.on.load(Ordering::Relaxed))
    {
        family(
            o,
            "nimgate_audit_anchor_writes_total",
            "counter",
            "Chain-head anchor writes to the anchor store, by result (an error is retried at the next tick).",
        );
        let _ = writeln!(o, "nimgate_audit_anchor_writes_total{{result=\"ok\"}} {}\nnimgate_audit_anchor_writes_total{{result=\"error\"}} {}", g(&a.writes), g(&a.errors));
        family(
            o,
            "nimgate_audit_anchor_seq",
            "gauge",
            "seq of the last chain head written to the anchor store.",
        );
        let _ = writeln!(o, "nimgate_audit_anchor_seq {}", g(&a.seq));
    }
}
