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
/// `server.log_level` (or `RUST_LOG`) as a filter, with the crates that may log credentials at
/// debug/trace (request bodies or headers of Vault and HTTP clients: Vault tokens, AppRole
/// secret-ids, JWTs) silenced whatever it says. `Err`: not a valid filter (the message says why).
pub fn log_filter(directives: &str) -> Result<EnvFilter, String> {
    let mut filter = EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("not a log filter ({e}); e.g. \"info\" or \"nimgate=debug,warn\""))?;
    for d in [
        "vaultrs=off",
        "rustify=off",
        "reqwest=off",
        "hyper=off",
        "hyper_util=off",
        "h2=off",
        "rustls=off",
        "tower=off",
    ] {
        if let Ok(d) = d.parse() {
            filter = filter.add_directive(d);
        }
    }
    Ok(filter)
}

use tracing_subscriber::EnvFilter;

/// Swaps the log filter of the installed subscriber (a config reload).
static FILTER: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// The `RUST_LOG` variable, when set (it takes the place of `server.log_level`).
fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG").ok()
}

/// Apply `server.log_level` after a reload (no-op when `RUST_LOG` is set or no subscriber is
/// installed). `Err`: the directives do not parse (validation already refused those).
pub fn set_log_level(level: &str) -> Result<(), String> {
    if rust_log().is_some() {
        return Ok(());
    }
    let (Some(h), Ok(f)) = (FILTER.get(), log_filter(level)) else {
        return Ok(());
    };
    h.reload(f).map_err(|e| e.to_string())
}

pub fn init_logging(otel: Option<&otel::Otel>, level: &str) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let wanted = rust_log().unwrap_or_else(|| level.to_string());
    let filter = log_filter(&wanted)
        .or_else(|_| log_filter("info"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = FILTER.set(handle);
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
