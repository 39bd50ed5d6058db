//! Logging (tracing, to stderr; `RUST_LOG` filter, `NIMGATE_LOG_FORMAT=json` for JSON lines),
//! OpenTelemetry traces (`otel`, `spans`; only with `[telemetry] otlp_endpoint`) and Prometheus
//! metrics (`metrics`, `labels`, `render`). JSON log lines inside a request carry its span's
//! `trace_id`/`span_id` fields.

mod labels;
mod metrics;
pub mod otel;
mod render;
mod routes;
pub mod spans;
#[cfg(test)]
mod tests;
pub use labels::{Op, MODEL_CAP};
pub use metrics::{Finished, Gauge, Metrics, ReqLabels, DURATION_HELP};
pub use routes::{render_routes, render_tls};

/// Install the global subscriber once. Secrets never reach it: header values are marked
/// sensitive, keys live in `SecretString`, and no code logs a secret.
/// `otel`: the trace pipeline, whose layer sees only spans of target `otel::TARGET` (whatever
/// `RUST_LOG` says).
pub fn init_logging(otel: Option<&otel::Otel>) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Third-party HTTP/Vault client crates may log request bodies or headers at debug/trace
    // (Vault tokens, AppRole secret-ids, JWTs): they are silenced whatever RUST_LOG says.
    for d in [
        "vaultrs=off",
        "rustify=off",
        "reqwest=off",
        "hyper=off",
        "hyper_util=off",
        "h2=off",
        "rustls=off",
        "tower_http=off",
        "tower=off",
    ] {
        if let Ok(d) = d.parse() {
            filter = filter.add_directive(d);
        }
    }
    let json = std::env::var("NIMGATE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    let fmt = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let traces = otel.map(|o| {
        // Only the attributes `spans` sets: no source location, thread or timing extras.
        tracing_opentelemetry::layer()
            .with_tracer(o.tracer.clone())
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(otel::TARGET, LevelFilter::INFO))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(traces)
        .try_init();
}
