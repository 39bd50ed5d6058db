//! Logging (tracing, to stderr; `RUST_LOG` filter, `NIMGATE_LOG_FORMAT=json` for JSON lines)
//! and Prometheus metrics.

mod metrics;
pub use metrics::{render_routes, Metrics};

/// Install the global subscriber once. Secrets never reach it: header values are marked
/// sensitive, keys live in `SecretString`, and no code logs a secret.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
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
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}
